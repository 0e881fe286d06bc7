"""The anthropic client: ``messages.create`` (also ``stream=True``), ``messages.parse`` and ``messages.stream``.

Anthropic's ``input_tokens`` excludes cached tokens; tokentrace's ``prompt_tokens`` includes them, so
``prompt = input_tokens + cache_read_input_tokens + cache_creation_input_tokens``. A stream reports the input
side in ``message_start`` and cumulative counts in ``message_delta``.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from ._call import Call, Target, Usage
from ._patch import Entry, Method, Prepared, begin, calls
from ._stream import watch_async, watch_sync

__all__ = ["ENTRIES"]

log = logging.getLogger(__name__)


def _count(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _read_usage(call: Call, usage: Any) -> None:
    """Merge a ``Usage`` or a ``MessageDeltaUsage`` (whose fields may be absent: then they are unchanged)."""
    if usage is None:
        return
    old = call.usage
    read = _count(getattr(usage, "cache_read_input_tokens", None))
    write = _count(getattr(usage, "cache_creation_input_tokens", None))
    read = old.cache_read if read is None else read
    write = old.cache_write if write is None else write
    uncached = _count(getattr(usage, "input_tokens", None))
    if uncached is None and old.prompt is not None:
        uncached = old.prompt - old.cache_read - old.cache_write
    output = _count(getattr(usage, "output_tokens", None))
    thinking = _count(getattr(getattr(usage, "output_tokens_details", None), "thinking_tokens", None))
    call.usage = Usage(
        prompt=None if uncached is None else uncached + read + write,
        comp=old.comp if output is None else output,
        cache_read=read,
        cache_write=write,
        reasoning=old.reasoning if thinking is None else thinking,
    )


def read_message(call: Call, message: Any) -> None:
    """A ``Message`` (or ``ParsedMessage``)."""
    model = getattr(message, "model", None)
    if isinstance(model, str) and model:
        call.model = model
    _read_usage(call, getattr(message, "usage", None))


def observe_event(call: Call, event: Any) -> bool:
    """A raw stream event: ``message_start`` (model, input usage), ``content_block_delta`` (output),
    ``message_delta`` (cumulative usage)."""
    kind = getattr(event, "type", None)
    if kind == "content_block_delta":
        call.first_output()
    elif kind == "message_start":
        read_message(call, getattr(event, "message", None))
    elif kind == "message_delta":
        _read_usage(call, getattr(event, "usage", None))
    return True


def _always_stream(method: Method, target: Target, kwargs: dict[str, Any]) -> Prepared:
    return Prepared(kwargs, True, method.observe)


#: ``messages.stream()``: always a stream; recorded when its manager is entered.
STREAM = Method("anthropic.messages.stream", read_message, observe_event, _always_stream)

_warned = False


def wrap_stream(original: Callable[..., Any], target: Target, is_async: bool) -> Callable[..., Any]:
    """``messages.stream()`` (a plain method on both clients): the manager it returns records its request."""

    @functools.wraps(original)
    def stream(*args: Any, **kwargs: Any) -> Any:
        manager = original(*args, **kwargs)
        try:
            watch_stream_manager(manager, kwargs, target)
        except Exception:
            log.exception("tokentrace: cannot instrument this anthropic.messages.stream call; it runs unrecorded")
        return manager

    return stream


def watch_stream_manager(manager: Any, kwargs: dict[str, Any], target: Target) -> None:
    """Record the request a ``MessageStreamManager`` (or the async one) makes when it is entered.

    The manager keeps that request as a private callable (sync) or awaitable (async); it is replaced on this
    instance by one that times the request and observes the raw event stream the ``MessageStream`` reads.
    """
    global _warned
    names = [name for name in vars(manager) if name.endswith("__api_request")]
    request = getattr(manager, names[0]) if len(names) == 1 else None
    if inspect.isawaitable(request):
        setattr(manager, names[0], _request_async(request, kwargs, target))
    elif callable(request):
        setattr(manager, names[0], _request_sync(request, kwargs, target))
    elif not _warned:
        _warned = True
        log.warning("tokentrace: this anthropic version's %s is not recorded", type(manager).__qualname__)


ENTRIES: tuple[Entry, ...] = (
    (("messages",), "create", calls(Method("anthropic.messages.create", read_message, observe_event))),
    (("messages",), "parse", calls(Method("anthropic.messages.parse", read_message, observe_event))),
    (("messages",), "stream", wrap_stream),
)


def _request_sync(request: Callable[[], Any], kwargs: dict[str, Any], target: Target) -> Callable[[], Any]:
    def api_request() -> Any:
        begun = begin(STREAM, target, kwargs)
        if begun is None:
            return request()
        prepared, call = begun
        try:
            raw = request()
        except Exception as exc:
            call.finish(exc)
            raise
        return watch_sync(raw, call, prepared.observe)

    return api_request


async def _request_async(request: Any, kwargs: dict[str, Any], target: Target) -> Any:
    try:
        begun = begin(STREAM, target, kwargs)
    except BaseException:  # BudgetExceeded: the request is not made, so its coroutine is never awaited
        getattr(request, "close", lambda: None)()
        raise
    if begun is None:
        return await request
    prepared, call = begun
    try:
        raw = await request
    except Exception as exc:
        call.finish(exc)
        raise
    return watch_async(raw, call, prepared.observe)
