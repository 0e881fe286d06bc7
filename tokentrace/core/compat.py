"""The error raised when an installed library no longer has an internal that tokentrace relies on.

Where tokentrace must reach a library's private internals (named in pyproject.toml beside its upper bound),
it does so through one adapter module, and that module raises this error naming the library, its installed
version and the range tokentrace is tested with, instead of failing somewhere far away or, worse, silently.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["IncompatibleLibrary", "installed_version"]


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution``, or ``"(not installed)"``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "(not installed)"


class IncompatibleLibrary(RuntimeError):
    """``distribution`` (as installed) lacks ``what``, an internal tokentrace uses."""

    def __init__(self, distribution: str, what: str, supported: str) -> None:
        self.distribution = distribution
        super().__init__(
            f"{distribution} {installed_version(distribution)} is not compatible with tokentrace: {what}. "
            f"tokentrace is tested with {distribution} {supported}; install a version in that range."
        )
