"""The openai client: which methods are recorded and how their responses and stream chunks are read.

Recorded: ``chat.completions.create``/``parse``, ``completions.create``, ``responses.create``/``parse`` (the
``stream()`` helpers of chat completions and responses go through ``create``). Usage follows OpenAI's
convention, which is tokentrace's: ``prompt_tokens`` includes ``prompt_tokens_details.cached_tokens``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from ._call import Call, Target, Usage
from ._patch import Entry, Method, Prepared, calls

__all__ = ["ENTRIES"]


def _count(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _read_usage(
    call: Call, usage: Any, prompt_field: str, comp_field: str, prompt_details: str, comp_details: str
) -> None:
    if usage is None:
        return
    cached = _count(getattr(getattr(usage, prompt_details, None), "cached_tokens", None))
    reasoning = _count(getattr(getattr(usage, comp_details, None), "reasoning_tokens", None))
    call.usage = Usage(
        prompt=_count(getattr(usage, prompt_field, None)),
        comp=_count(getattr(usage, comp_field, None)),
        cache_read=cached or 0,
        reasoning=reasoning,
    )


def _completion_usage(call: Call, usage: Any) -> None:
    """``CompletionUsage`` of chat completions and completions."""
    _read_usage(call, usage, "prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details")


def _response_usage(call: Call, usage: Any) -> None:
    """``ResponseUsage`` of the Responses API."""
    _read_usage(call, usage, "input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details")


def _read_model(call: Call, obj: Any) -> None:
    model = getattr(obj, "model", None)
    if isinstance(model, str) and model:
        call.model = model


def read_completion(call: Call, response: Any) -> None:
    """A ``ChatCompletion`` or ``Completion``."""
    _read_model(call, response)
    _completion_usage(call, getattr(response, "usage", None))


def read_response(call: Call, response: Any) -> None:
    """A Responses API ``Response``."""
    _read_model(call, response)
    _response_usage(call, getattr(response, "usage", None))


_OUTPUT_FIELDS = ("content", "refusal", "tool_calls", "function_call", "audio", "reasoning_content", "reasoning")


def observe_chat_chunk(call: Call, chunk: Any, hide_usage: bool = False) -> bool:
    """A ``ChatCompletionChunk``. With ``hide_usage`` (we asked for usage, the caller did not), the final
    usage-only chunk is kept from the caller and the other chunks look as if usage had not been asked for."""
    _read_model(call, chunk)
    choices = getattr(chunk, "choices", None) or ()
    if call.ttft_ms is None:
        for choice in choices:
            delta = getattr(choice, "delta", None)
            if any(getattr(delta, field, None) for field in _OUTPUT_FIELDS):
                call.first_output()
                break
    usage = getattr(chunk, "usage", None)
    if usage is not None:
        _completion_usage(call, usage)
        return not (hide_usage and not choices)
    if hide_usage:
        getattr(chunk, "model_fields_set", set()).discard("usage")  # as if the key had not been sent
    return True


def observe_completion_chunk(call: Call, chunk: Any, hide_usage: bool = False) -> bool:
    """A streamed ``Completion`` (legacy completions endpoint)."""
    _read_model(call, chunk)
    choices = getattr(chunk, "choices", None) or ()
    if call.ttft_ms is None and any(getattr(choice, "text", None) for choice in choices):
        call.first_output()
    usage = getattr(chunk, "usage", None)
    if usage is not None:
        _completion_usage(call, usage)
        return not (hide_usage and not choices)
    if hide_usage:
        getattr(chunk, "model_fields_set", set()).discard("usage")
    return True


def observe_response_event(call: Call, event: Any) -> bool:
    """A Responses API stream event: ``*.delta`` events carry output; ``response.completed`` (or
    ``.incomplete``/``.failed``) carries the usage; ``response.failed`` and ``error`` mark the call failed."""
    kind = getattr(event, "type", None)
    if not isinstance(kind, str):
        return True
    if kind.endswith(".delta"):
        call.first_output()
    response = getattr(event, "response", None)
    if response is not None:
        read_response(call, response)
        if kind == "response.failed":
            error = getattr(response, "error", None)
            message = getattr(error, "message", None) or "the response failed"
            call.failure = ("error", f"response.failed: {message}")
    elif kind == "error":
        call.failure = ("error", f"error event: {getattr(event, 'message', None) or 'unknown error'}")
    return True


def _stream_usage(observe: Callable[..., bool]) -> Callable[[Method, Target, dict[str, Any]], Prepared]:
    """A ``prepare`` that asks an openai stream for its usage chunk unless the caller decided themselves."""

    def prepare(method: Method, target: Target, kwargs: dict[str, Any]) -> Prepared:
        if kwargs.get("stream") is not True:
            return Prepared(kwargs, False, method.observe)
        options = kwargs.get("stream_options")
        if not target.stream_usage or (isinstance(options, Mapping) and "include_usage" in options):
            return Prepared(kwargs, True, method.observe)
        merged = {**options, "include_usage": True} if isinstance(options, Mapping) else {"include_usage": True}
        return Prepared({**kwargs, "stream_options": merged}, True, functools.partial(observe, hide_usage=True))

    return prepare


_CHAT = Method("openai.chat.completions.create", read_completion, observe_chat_chunk, _stream_usage(observe_chat_chunk))
_COMPLETIONS = Method(
    "openai.completions.create", read_completion, observe_completion_chunk, _stream_usage(observe_completion_chunk)
)
_RESPONSES = Method("openai.responses.create", read_response, observe_response_event)

ENTRIES: tuple[Entry, ...] = (
    (("chat", "completions"), "create", calls(_CHAT)),
    (
        ("chat", "completions"),
        "parse",
        calls(Method("openai.chat.completions.parse", read_completion, observe_chat_chunk)),
    ),
    (("completions",), "create", calls(_COMPLETIONS)),
    (("responses",), "create", calls(_RESPONSES)),
    (("responses",), "parse", calls(Method("openai.responses.parse", read_response, observe_response_event))),
)
