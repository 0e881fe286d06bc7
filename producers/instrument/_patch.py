"""Wrap one method of one client resource instance (never the class), and unwrap it again.

The wrapper keeps the method's signature (``functools.wraps``) and kind (``async def`` stays a coroutine
function), returns what the method returned (a stream object observed in place), and lets every exception
of the method through unchanged. Instrumentation errors are logged and the call goes on uninstrumented.
The one exception it raises itself is ``BudgetExceeded``, before the request, when the current trace's
budget is already spent.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..budget import BudgetExceeded
from ._call import Call, Target
from ._stream import Observe, watch_async, watch_sync

__all__ = [
    "Entry",
    "Method",
    "Prepared",
    "Wrap",
    "begin",
    "calls",
    "is_wrapped",
    "patch",
    "unpatch",
    "wrap_async",
    "wrap_sync",
]

log = logging.getLogger(__name__)

#: Set on every wrapper: the callable it wraps.
ORIGINAL = "__tokentrace_original__"
#: Header the clients' ``with_raw_response`` / ``with_streaming_response`` wrappers add to a request.
_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A call about to be made: the arguments to pass on, whether it streams, and how to observe its items."""

    kwargs: dict[str, Any]
    stream: bool
    observe: Observe


@dataclass(frozen=True, slots=True)
class Method:
    """How to record one client method: its name, how to read a complete response, how to observe a stream."""

    name: str
    read: Callable[[Call, Any], None]
    observe: Observe
    #: Adjusts the arguments (e.g. asks for stream usage); by default passes them on as they are.
    prepare: Callable[[Method, Target, dict[str, Any]], Prepared] | None = None

    def begin(self, target: Target, kwargs: dict[str, Any]) -> tuple[Prepared, Call] | None:
        """Prepare the call and start its clock; ``None`` for calls that are not recorded."""
        headers = kwargs.get("extra_headers")
        if isinstance(headers, Mapping) and _RAW_RESPONSE_HEADER in headers:
            return None  # with_raw_response / with_streaming_response: a raw HTTP response, not recorded
        if self.prepare is None:
            prepared = Prepared(kwargs, kwargs.get("stream") is True, self.observe)
        else:
            prepared = self.prepare(self, target, kwargs)
        model = kwargs.get("model")
        return prepared, Call(target, self.name, model if isinstance(model, str) else None)


def begin(method: Method, target: Target, kwargs: dict[str, Any]) -> tuple[Prepared, Call] | None:
    """``method.begin``, logging (and returning ``None`` for) any failure but ``BudgetExceeded``."""
    try:
        return method.begin(target, kwargs)
    except BudgetExceeded:
        raise
    except Exception:
        log.exception("tokentrace: cannot instrument this %s call; it runs unrecorded", method.name)
        return None


def _complete(method: Method, call: Call, response: Any) -> None:
    try:
        method.read(call, response)
    except Exception:
        log.exception("tokentrace: could not read the %s response", method.name)
    call.finish()


def wrap_sync(original: Callable[..., Any], method: Method, target: Target) -> Callable[..., Any]:
    """A wrapper recording each call of the sync ``original``."""

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        begun = begin(method, target, kwargs)
        if begun is None:
            return original(*args, **kwargs)
        prepared, call = begun
        try:
            result = original(*args, **prepared.kwargs)
        except Exception as exc:
            call.finish(exc)
            raise
        if prepared.stream:
            return watch_sync(result, call, prepared.observe)
        _complete(method, call, result)
        return result

    setattr(wrapper, ORIGINAL, original)
    return wrapper


def wrap_async(original: Callable[..., Any], method: Method, target: Target) -> Callable[..., Any]:
    """A wrapper recording each call of the ``async def`` ``original``."""

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        begun = begin(method, target, kwargs)
        if begun is None:
            return await original(*args, **kwargs)
        prepared, call = begun
        try:
            result = await original(*args, **prepared.kwargs)
        except Exception as exc:
            call.finish(exc)
            raise
        if prepared.stream:
            return watch_async(result, call, prepared.observe)
        _complete(method, call, result)
        return result

    setattr(wrapper, ORIGINAL, original)
    return wrapper


#: Makes the wrapper of one method: ``wrap(original, target, is_async)``.
Wrap = Callable[[Callable[..., Any], Target, bool], Callable[..., Any]]
#: What to wrap on a client: (resource path from the client, method name, how to wrap it).
Entry = tuple[tuple[str, ...], str, Wrap]


def calls(method: Method) -> Wrap:
    """Wrap a method whose calls return a response or (with ``stream=True``) a stream object."""

    def wrap(original: Callable[..., Any], target: Target, is_async: bool) -> Callable[..., Any]:
        return (wrap_async if is_async else wrap_sync)(original, method, target)

    return wrap


def is_wrapped(obj: object, name: str) -> bool:
    """Whether ``obj.name`` is one of our wrappers (set on the instance)."""
    return hasattr(vars(obj).get(name), ORIGINAL) if hasattr(obj, "__dict__") else False


def patch(obj: object, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> bool:
    """Replace ``obj.name`` on the instance with ``wrap(original)``; re-wrapping replaces our earlier wrapper.

    Returns False when ``obj`` has no such method.
    """
    current = getattr(obj, name, None)
    if not callable(current):
        return False
    original = getattr(current, ORIGINAL, current)
    wrapper = wrap(original)
    setattr(wrapper, ORIGINAL, original)
    setattr(obj, name, wrapper)
    return True


def unpatch(obj: object, name: str) -> bool:
    """Put back what ``patch`` replaced; False when ``obj.name`` is not our wrapper."""
    if not is_wrapped(obj, name):
        return False
    original = getattr(vars(obj)[name], ORIGINAL)
    if getattr(original, "__func__", None) is getattr(type(obj), name, None):
        delattr(obj, name)  # the class's method shows through again
    else:
        setattr(obj, name, original)  # something set on the instance before us
    return True
