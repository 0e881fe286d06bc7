"""The README's instrumentation example, run in this process: the spans' trace structure and fields.

tests/test_readme.py runs the same block as a script against a real server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import tokentrace.producers
from tests.producers.conftest import RecordingTransport
from tests.producers.instrument.fakeapi import FakeProviders

README = Path(__file__).resolve().parents[3] / "README.md"


def example() -> str:
    section = README.read_text().split("## Instrumenting OpenAI and Anthropic clients", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


def test_the_readme_example(
    providers: FakeProviders, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = RecordingTransport()
    monkeypatch.setattr(tokentrace.producers, "HTTPTransport", lambda url: recording)
    monkeypatch.setenv("OPENAI_BASE_URL", providers.openai_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", providers.anthropic_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    namespace: dict[str, Any] = {}
    exec(compile(example(), str(README), "exec"), namespace)
    assert namespace["text"] == "Hello world!"
    chat, streamed = recording.spans
    assert chat.name == streamed.name == "summarize-document" and chat.trace_id == streamed.trace_id
    assert chat.parent_span_id == streamed.parent_span_id is not None
    assert (chat.model, chat.provider, streamed.model, streamed.provider) == (
        "gpt-4o",
        "openai",
        "claude-sonnet-4-6",
        "anthropic",
    )
    out = capsys.readouterr().out
    # The streamed text, then (as the stream ends) the standalone span as a JSON line on stdout.
    assert out.startswith("Hello world!{")
    span = json.loads(out.removeprefix("Hello world!"))
    assert span["name"] == "openai.chat.completions.create" and span["prompt_tokens"] == 1200
