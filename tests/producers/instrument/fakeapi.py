"""A real local aiohttp server speaking the OpenAI and Anthropic HTTP APIs, run in its own thread.

The official clients talk to it over real sockets: ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/responses`` (OpenAI) and ``/v1/messages`` (Anthropic), as JSON or as Server-Sent Events, with the
providers' usage objects, stream events and error bodies (as in openai-python's and anthropic-sdk-python's
types). The request's ``model`` picks the behaviour:

- ``fail-429`` / ``fail-500``: the provider's error body with that status;
- ``slow``: answers after ``SLOW_S`` (for client timeouts);
- ``no-usage``: a stream without a usage chunk (a server that ignores ``stream_options``);
- ``fail-midstream``: a stream that sends some text, then an error event;
- anything else: a normal answer whose ``model`` is ``RESPONSE_MODEL[model]`` (or the request's model).

Streams wait ``first_token_delay`` seconds before the first text chunk and ``end_delay`` before the last
event, so time to first token and latency have known lower bounds.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

from aiohttp import web

#: The dated model a response names for a request's model alias.
RESPONSE_MODEL = {"gpt-test": "gpt-test-2025-01-01", "claude-test": "claude-test-20250101"}
TEXT = ["Hello", " world", "!"]
SLOW_S = 1.0

#: OpenAI usage: prompt_tokens includes the cached tokens; completion_tokens includes reasoning tokens.
OPENAI_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 128,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
RESPONSES_USAGE = {
    "input_tokens": 1200,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 128},
    "total_tokens": 1500,
}
#: Anthropic usage: input_tokens excludes both kinds of cached tokens.
ANTHROPIC_USAGE = {
    "input_tokens": 100,
    "cache_creation_input_tokens": 2000,
    "cache_read_input_tokens": 3000,
    "output_tokens": 50,
}
CREATED = 1_760_000_000


class FakeProviders:
    """``openai_url`` / ``anthropic_url`` are the clients' base URLs; ``requests`` holds (path, JSON body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.first_token_delay = 0.05
        self.end_delay = 0.05
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        port = self._sock.getsockname()[1]
        self.anthropic_url = f"http://127.0.0.1:{port}"
        self.openai_url = f"{self.anthropic_url}/v1"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-providers", daemon=True)

    # --- OpenAI -------------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, model = await self._begin(request)
        failed = await self._openai_failure(model)
        if failed is not None:
            return failed
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(TEXT), "refusal": None, "annotations": []}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            return web.json_response(self._chat_object("chat.completion", model, [choice], OPENAI_USAGE))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and model != "no-usage"

        def chunk(delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            data = self._chat_object("chat.completion.chunk", model, choices, None)
            if not include_usage:
                del data["usage"]
            return data

        first = chunk({"role": "assistant", "content": "", "refusal": None})
        texts = [chunk({"content": text}) for text in TEXT]
        last = chunk({}, "stop")
        usage = {**chunk(None), "usage": OPENAI_USAGE} if include_usage else None
        return await self._openai_sse(request, model, first, texts, last, usage)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, model = await self._begin(request)
        failed = await self._openai_failure(model)
        if failed is not None:
            return failed
        if not body.get("stream"):
            choice = {"text": "".join(TEXT), "index": 0, "logprobs": None, "finish_reason": "stop"}
            return web.json_response(self._completion_object(model, [choice], OPENAI_USAGE))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and model != "no-usage"

        def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
            choices = [] if text is None else [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]
            data = self._completion_object(model, choices, None)
            if not include_usage:
                del data["usage"]
            return data

        texts = [chunk(text) for text in TEXT]
        usage = {**chunk(None), "usage": OPENAI_USAGE} if include_usage else None
        return await self._openai_sse(request, model, None, texts, chunk("", "stop"), usage)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body, model = await self._begin(request)
        failed = await self._openai_failure(model)
        if failed is not None:
            return failed
        if not body.get("stream"):
            return web.json_response(self._response_object(model, "completed", RESPONSES_USAGE))
        response = await self._open_sse(request)
        seq = iter(range(1000))

        async def send(kind: str, **fields: Any) -> None:
            await self._event(response, kind, {"type": kind, "sequence_number": next(seq), **fields})

        text = "".join(TEXT)
        item = {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []}
        where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        part = {**empty, "text": text}
        await send("response.created", response=self._response_object(model, "in_progress", None))
        await send("response.in_progress", response=self._response_object(model, "in_progress", None))
        await send("response.output_item.added", output_index=0, item=item)
        await send("response.content_part.added", **where, part=empty)
        await asyncio.sleep(self.first_token_delay)
        for delta in TEXT:
            await send("response.output_text.delta", **where, delta=delta, logprobs=[])
        await asyncio.sleep(self.end_delay)
        await send("response.output_text.done", **where, text=text, logprobs=[])
        await send("response.content_part.done", **where, part=part)
        done_item = {**item, "status": "completed", "content": [part]}
        await send("response.output_item.done", output_index=0, item=done_item)
        await send("response.completed", response=self._response_object(model, "completed", RESPONSES_USAGE))
        await response.write_eof()
        return response

    async def _openai_sse(
        self,
        request: web.Request,
        model: str,
        first: dict[str, Any] | None,
        texts: list[dict[str, Any]],
        last: dict[str, Any],
        usage: dict[str, Any] | None,
    ) -> web.StreamResponse:
        response = await self._open_sse(request)
        if first is not None:
            await self._data(response, first)
        await asyncio.sleep(self.first_token_delay)
        for index, text in enumerate(texts):
            if model == "fail-midstream" and index == 1:
                error = {"message": "The server had an error while processing your request.", "type": "server_error"}
                await self._data(response, {"error": error})
                await response.write_eof()
                return response
            await self._data(response, text)
        await asyncio.sleep(self.end_delay)
        await self._data(response, last)
        if usage is not None:
            await self._data(response, usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _openai_failure(self, model: str) -> web.Response | None:
        if model == "slow":
            await asyncio.sleep(SLOW_S)
        if model.startswith("fail-") and model[5:].isdigit():
            status = int(model[5:])
            kind, code = ("requests", "rate_limit_exceeded") if status == 429 else ("server_error", None)
            message = f"Rate limit reached for {model}" if status == 429 else "The server had an error"
            error = {"message": message, "type": kind, "param": None, "code": code}
            return web.json_response({"error": error}, status=status)
        return None

    @staticmethod
    def _chat_object(obj: str, model: str, choices: list[Any], usage: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-test",
            "object": obj,
            "created": CREATED,
            "model": RESPONSE_MODEL.get(model, model),
            "system_fingerprint": "fp_test",
            "service_tier": "default",
            "choices": choices,
            "usage": usage,
        }

    @staticmethod
    def _completion_object(model: str, choices: list[Any], usage: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": "cmpl-test",
            "object": "text_completion",
            "created": CREATED,
            "model": RESPONSE_MODEL.get(model, model),
            "system_fingerprint": "fp_test",
            "choices": choices,
            "usage": usage,
        }

    @staticmethod
    def _response_object(model: str, status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
        text = {"type": "output_text", "text": "".join(TEXT), "annotations": [], "logprobs": []}
        message = {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [text]}
        return {
            "id": "resp_test",
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "model": RESPONSE_MODEL.get(model, model),
            "output": [message] if status == "completed" else [],
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "usage": usage,
        }

    # --- Anthropic ----------------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body, model = await self._begin(request)
        if model == "slow":
            await asyncio.sleep(SLOW_S)
        if model.startswith("fail-") and model[5:].isdigit():
            status = int(model[5:])
            kind, message = (
                ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit")
                if status == 429
                else ("api_error", "Internal server error")
            )
            error = {"type": "error", "error": {"type": kind, "message": message}}
            return web.json_response(error, status=status, headers={"request-id": "req_test"})
        message = {
            "id": "msg_test",
            "type": "message",
            "role": "assistant",
            "model": RESPONSE_MODEL.get(model, model),
            "content": [{"type": "text", "text": "".join(TEXT)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": ANTHROPIC_USAGE,
        }
        if not body.get("stream"):
            return web.json_response(message, headers={"request-id": "req_test"})
        response = await self._open_sse(request)
        start_usage = {**ANTHROPIC_USAGE, "output_tokens": 1}
        start = {**message, "content": [], "stop_reason": None, "usage": start_usage}
        await self._event(response, "message_start", {"type": "message_start", "message": start})
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        await self._event(response, "content_block_start", block)
        await self._event(response, "ping", {"type": "ping"})
        await asyncio.sleep(self.first_token_delay)
        for index, text in enumerate(TEXT):
            if model == "fail-midstream" and index == 1:
                error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                await self._event(response, "error", error)
                await response.write_eof()
                return response
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
            await self._event(response, "content_block_delta", delta)
        await self._event(response, "content_block_stop", {"type": "content_block_stop", "index": 0})
        await asyncio.sleep(self.end_delay)
        end = {"stop_reason": "end_turn", "stop_sequence": None}
        usage = {"output_tokens": ANTHROPIC_USAGE["output_tokens"]}
        await self._event(response, "message_delta", {"type": "message_delta", "delta": end, "usage": usage})
        await self._event(response, "message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response

    # --- plumbing -----------------------------------------------------------------------------------

    async def _begin(self, request: web.Request) -> tuple[dict[str, Any], str]:
        body = await request.json()
        self.requests.append((request.path, body))
        return body, str(body.get("model", ""))

    @staticmethod
    async def _open_sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        return response

    @staticmethod
    async def _data(response: web.StreamResponse, data: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(data)}\n\n".encode())

    @staticmethod
    async def _event(response: web.StreamResponse, event: str, data: dict[str, Any]) -> None:
        await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, shutdown_timeout=2.0)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.SockSite(self._runner, self._sock).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> FakeProviders:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake provider server did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
