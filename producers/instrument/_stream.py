"""Watch a client's stream object in place, so the caller keeps the real object.

The openai and anthropic clients' ``Stream``/``AsyncStream`` read their items from ``_iterator`` and
release the connection with ``close()``; both are replaced on the instance (never on the class): the
iterator by one that shows each item to an observer first, ``close`` by one that also ends the call. A
stream that ends, fails, is closed, or is garbage-collected unfinished ends its call exactly once.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from ._call import Call

__all__ = ["Observe", "watch_async", "watch_sync"]

log = logging.getLogger(__name__)

#: Looks at one stream item (updating the call); returns whether the caller gets to see it.
Observe = Callable[[Call, Any], bool]

S = TypeVar("S")

_warned: set[str] = set()


def watch_sync(stream: S, call: Call, observe: Observe) -> S:
    """Observe ``stream`` (a sync ``Stream``) in place and return it."""
    inner: Any = getattr(stream, "_iterator", None)
    close = getattr(type(stream), "close", None)
    if not hasattr(inner, "__next__") or not callable(close):
        return _unobservable(stream, call)
    setattr(stream, "_iterator", _iterate(inner, call, observe))  # noqa: B010 - an instance attribute
    setattr(stream, "close", _closer(weakref.ref(stream), close, call))  # noqa: B010
    call.watch(stream)
    return stream


def watch_async(stream: S, call: Call, observe: Observe) -> S:
    """Observe ``stream`` (an ``AsyncStream``) in place and return it."""
    inner: Any = getattr(stream, "_iterator", None)
    close = getattr(type(stream), "close", None)
    if not hasattr(inner, "__anext__") or not callable(close):
        return _unobservable(stream, call)
    setattr(stream, "_iterator", _aiterate(inner, call, observe))  # noqa: B010
    setattr(stream, "close", _async_closer(weakref.ref(stream), close, call))  # noqa: B010
    call.watch(stream)
    return stream


def _unobservable(stream: S, call: Call) -> S:
    """A stream of an unknown shape: record the call now (its usage unknown) rather than risk breaking it."""
    kind = type(stream).__qualname__
    if kind not in _warned:
        _warned.add(kind)
        log.warning("tokentrace: cannot observe %s objects; %s streams are recorded without usage", kind, call.method)
    call.finish()
    return stream


def _show(observe: Observe, call: Call, item: Any) -> bool:
    try:
        return observe(call, item)
    except Exception:
        log.exception("tokentrace: could not read a %s stream item; it is passed on unchanged", call.method)
        return True


def _iterate(inner: Iterator[Any], call: Call, observe: Observe) -> Iterator[Any]:
    try:
        for item in inner:
            if _show(observe, call, item):
                yield item
    except Exception as exc:
        call.finish(exc)
        raise
    except BaseException:  # closed (GeneratorExit) or interrupted while the caller held the stream
        call.finish(None, True)
        raise
    call.finish()


async def _aiterate(inner: AsyncIterator[Any], call: Call, observe: Observe) -> AsyncIterator[Any]:
    try:
        async for item in inner:
            if _show(observe, call, item):
                yield item
    except Exception as exc:
        call.finish(exc)
        raise
    except BaseException:  # closed (GeneratorExit) or cancelled while the caller held the stream
        call.finish(None, True)
        raise
    call.finish()


def _closer(ref: weakref.ref[Any], close: Callable[[Any], None], call: Call) -> Callable[[], None]:
    """``stream.close()``: the class's ``close``, then the call ends (as closed early unless it had ended).
    Holds the stream weakly, so a dropped stream is still collected at once."""

    def close_stream() -> None:
        stream = ref()
        try:
            if stream is not None:
                close(stream)
        finally:
            call.finish(None, True)

    return close_stream


def _async_closer(
    ref: weakref.ref[Any], close: Callable[[Any], Awaitable[None]], call: Call
) -> Callable[[], Awaitable[None]]:
    async def close_stream() -> None:
        stream = ref()
        try:
            if stream is not None:
                await close(stream)
        finally:
            call.finish(None, True)

    return close_stream
