"""Every Python block of README.md runs as written, each in a fresh interpreter, as a reader pasting it would.

A block that talks to ``localhost:9090`` runs against a real ``tokentrace serve`` started here (the address
rewritten to its free port), and must leave spans in it; a block that starts its own server
(``HTTPServerConfig``) gets a free port instead of :9090; a block that calls OpenAI or Anthropic runs against the
fake providers, pointed at through the clients' own environment variables, as a user points them at a proxy.
So the README cannot rot: a renamed argument, a missing import or a placeholder fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.api.server_process import ServerProcess, free_port
from tests.producers.instrument.fakeapi import FakeProviders

README = Path(__file__).resolve().parents[1] / "README.md"
RUN_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    section: str  # the nearest heading above the block
    ordinal: int  # its place among the section's Python blocks, from 0
    code: str

    @property
    def id(self) -> str:
        return f"{self.section}#{self.ordinal}"


def python_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    section, fence, lines, counts = "", None, list[str](), dict[str, int]()
    for line in text.splitlines():
        if fence is None:
            if line.startswith("```"):
                fence, lines = line.removeprefix("```").strip(), []
            elif line.startswith("#"):
                section = line.lstrip("#").strip()
        elif line.startswith("```"):
            if fence == "python":
                ordinal = counts.get(section, 0)
                counts[section] = ordinal + 1
                blocks.append(Block(section, ordinal, "\n".join(lines) + "\n"))
            fence = None
        else:
            lines.append(line)
    return blocks


BLOCKS = python_blocks(README.read_text())


@dataclass
class Run:
    stdout: str
    stderr: str
    new_spans: int  # spans the README's server counted while the block ran


def json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def sdk_to_stdout(run: Run) -> None:
    spans = json_lines(run.stdout)
    assert [(s["name"], s["model"], s["cost_usd"]) for s in spans] == [
        ("draft", "gpt-4o", 0.00256),
        ("summarize-document", "gpt-4o-mini", 0.0000192),
    ]
    assert spans[0]["attributes"] == {"eval.score": 0.87} and spans[0]["trace_id"] == spans[1]["trace_id"]


def instrumented_clients(run: Run) -> None:
    assert run.stdout.startswith("Hello world!{"), run.stdout  # the stream's text, then its standalone span
    [standalone] = json_lines(run.stdout.removeprefix("Hello world!"))
    assert standalone["name"] == "openai.chat.completions.create"
    assert run.new_spans == 2  # the traced chat call and the traced stream, sent to the server


def spans_sent(count: int) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        assert run.new_spans == count, run

    return check


#: What each block must do beyond running cleanly (and, when it names the server, leaving spans in it).
EXPECTED: dict[str, Callable[[Run], None]] = {
    "Recording spans (the SDK)#0": sdk_to_stdout,
    "Recording spans (the SDK)#1": spans_sent(1),
    "Instrumenting OpenAI and Anthropic clients#0": instrumented_clients,
    "OpenTelemetry (OTLP) ingest#0": spans_sent(1),
    "Seed 001 (MIST) compatibility#0": spans_sent(1),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("readme") / "data")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def providers() -> Iterator[FakeProviders]:
    fake = FakeProviders().start()
    yield fake
    fake.stop()


def span_count(server: ServerProcess) -> int:
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
        return int(json.load(response)["span_count"])


def test_the_readme_has_the_blocks_this_test_expects() -> None:
    assert set(EXPECTED) <= {block.id for block in BLOCKS}, "README blocks moved: update EXPECTED"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_a_readme_python_block_runs_as_written(
    block: Block, server: ServerProcess, providers: FakeProviders, tmp_path: Path
) -> None:
    code = block.code
    talks_to_server = "localhost:9090" in code
    code = code.replace("localhost:9090", f"127.0.0.1:{server.port}")
    if "HTTPServerConfig(" in code:
        code = re.sub(r"([\"'])(0\.0\.0\.0|127\.0\.0\.1|localhost)?:9090\1", rf"\1\2:{free_port()}\1", code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENTRACE_", "OTEL_"))}
    env |= {
        "OPENAI_BASE_URL": providers.openai_url,
        "OPENAI_API_KEY": "sk-readme",
        "ANTHROPIC_BASE_URL": providers.anthropic_url,
        "ANTHROPIC_API_KEY": "sk-readme",
        "PYTHONUNBUFFERED": "1",
    }
    before = span_count(server)
    script = tmp_path / "readme_block.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert done.returncode == 0, f"{block.id} exited {done.returncode}:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    run = Run(done.stdout, done.stderr, span_count(server) - before)
    if talks_to_server:
        assert run.new_spans >= 1, f"{block.id} names the server but sent it nothing"
    check = EXPECTED.get(block.id)
    if check is not None:
        check(run)
