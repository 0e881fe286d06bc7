"""Span attributes the client instrumentation sets (besides the cache-token attributes of the core).

``gen_ai.*`` names follow the OpenTelemetry GenAI conventions where one exists; ``tokentrace.*`` names are
tokentrace's own.
"""

from __future__ import annotations

__all__ = [
    "CLOSED_EARLY_ATTRIBUTE",
    "METHOD_ATTRIBUTE",
    "REASONING_ATTRIBUTE",
    "REQUEST_MODEL_ATTRIBUTE",
    "TTFT_ATTRIBUTE",
    "USAGE_MISSING_ATTRIBUTE",
]

#: The client method called, e.g. ``openai.chat.completions.create`` or ``anthropic.messages.stream`` (also
#: the span's name when the call is not made inside a trace; inside one, spans carry the trace's name).
METHOD_ATTRIBUTE = "tokentrace.client_method"
#: The model the request asked for, when the response names another (``gpt-4o`` → ``gpt-4o-2024-08-06``).
REQUEST_MODEL_ATTRIBUTE = "gen_ai.request.model"
#: Streams: milliseconds from sending the request to the first chunk carrying generated output (text, a
#: tool call or reasoning), not to a role-only or bookkeeping chunk. Never above the span's ``latency_ms``.
TTFT_ATTRIBUTE = "gen_ai.response.time_to_first_token_ms"
#: Reasoning (thinking) tokens, already counted in ``comp_tokens``; set when the provider reports some.
REASONING_ATTRIBUTE = "gen_ai.usage.reasoning_tokens"
#: ``true`` when the provider reported no token counts (a stream without a usage chunk, or one closed
#: before it): the span then has no prompt/completion counts, ``total_tokens`` 0 and ``cost_usd`` null.
USAGE_MISSING_ATTRIBUTE = "tokentrace.usage_missing"
#: ``true`` when a stream was closed or garbage-collected before its end: counts may be partial.
CLOSED_EARLY_ATTRIBUTE = "tokentrace.stream_closed_early"
