"""Instrument one client instance: wrap its resources' methods, and instrument the copies it makes.

Only the instance changes (attributes set on it and on its resource objects); the client classes, other
clients and the rest of the process are untouched. ``client.with_options(...)``/``client.copy(...)`` return
a new client, which is instrumented like this one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

from ._call import Target
from ._patch import Entry, is_wrapped, patch, unpatch

__all__ = ["instrument_client", "is_instrumented", "uninstrument_client"]

log = logging.getLogger(__name__)

_COPIERS = ("copy", "with_options")


def _resources(client: object, entries: tuple[Entry, ...]) -> Iterator[tuple[object, str, Entry]]:
    for entry in entries:
        path, name, _ = entry
        resource: object = client
        for attribute in path:
            resource = getattr(resource, attribute, None)
            if resource is None:
                break
        else:
            yield resource, name, entry


def instrument_client(client: object, entries: tuple[Entry, ...], target: Target, is_async: bool) -> None:
    """Wrap each method of ``entries`` on ``client`` (again, with ``target``, if it already was)."""
    for resource, name, (_, _, wrap) in _resources(client, entries):
        patch(resource, name, functools.partial(_bind, wrap=wrap, target=target, is_async=is_async))
    for name in _COPIERS:
        patch(client, name, functools.partial(_copier, entries=entries, target=target, is_async=is_async))


def uninstrument_client(client: object, entries: tuple[Entry, ...]) -> bool:
    """Undo ``instrument_client``; False when nothing was instrumented."""
    undone = False
    for resource, name, _ in _resources(client, entries):
        undone = unpatch(resource, name) or undone
    for name in _COPIERS:
        undone = unpatch(client, name) or undone
    return undone


def is_instrumented(client: object, entries: tuple[Entry, ...]) -> bool:
    return any(is_wrapped(resource, name) for resource, name, _ in _resources(client, entries))


def _bind(
    original: Callable[..., Any], *, wrap: Callable[..., Callable[..., Any]], target: Target, is_async: bool
) -> Callable[..., Any]:
    return wrap(original, target, is_async)


def _copier(
    original: Callable[..., Any], *, entries: tuple[Entry, ...], target: Target, is_async: bool
) -> Callable[..., Any]:
    @functools.wraps(original)
    def copy(*args: Any, **kwargs: Any) -> Any:
        clone = original(*args, **kwargs)
        try:
            instrument_client(clone, entries, target, is_async)
        except Exception:
            log.exception("tokentrace: could not instrument a copy of %s", type(clone).__qualname__)
        return clone

    return copy
