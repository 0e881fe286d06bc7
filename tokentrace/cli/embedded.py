"""The embedded mode's commands: ``serve``, ``demo``, ``check-config``, ``check-data``.

Flags default to None, meaning "the configuration's value" (``tokentrace.config`` owns every default).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tokentrace.cli._common import DEMO_RATE, ConfigOption, VerboseOption, fail, settings, setup_logging
from tokentrace.config import HTTPServerConfig

__all__ = ["check_config", "check_data", "demo", "serve"]

console = Console(stderr=True)


def serve(
    config_path: ConfigOption = None,
    addr: Annotated[str | None, typer.Option(help="Listen address, e.g. :9090 or 127.0.0.1:9090.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the log and snapshots live.")] = None,
    max_spans: Annotated[int | None, typer.Option(help="Spans kept for /traces (oldest traces go first).")] = None,
    demo: Annotated[bool, typer.Option(help="Also generate demo traffic into this server.")] = False,
    demo_rate: Annotated[float, typer.Option(help="Demo spans per second.")] = DEMO_RATE,
    verbose: VerboseOption = False,
) -> None:
    """Run the embedded server: ingest, aggregation, alerts and the HTTP API in one process."""
    setup_logging(verbose)
    config = settings(
        config_path,
        {
            "http_server.addr": ("--addr", addr),
            "storage.data_dir": ("--data-dir", None if data_dir is None else str(data_dir)),
            "storage.max_spans": ("--max-spans", max_spans),
        },
    )
    from tokentrace.api.embedded import serve_embedded
    from tokentrace.api.server import parse_addr

    try:
        parse_addr(config.http_server.addr)
    except ValueError as exc:
        fail(str(exc))

    async def started(url: str) -> None:
        console.print(f"[bold green]tokentrace[/bold green] serving on {url}  (data: {config.storage.data_dir})")
        local = url.replace("0.0.0.0", "127.0.0.1")
        console.print(f"  web console: open {local}/ in a browser")
        console.print(f"  try: curl {local}/metrics?window=1h   ·   {local}/metrics/prometheus   ·   {local}/health")
        if demo:
            console.print(f"  demo traffic: ~{demo_rate:g} spans/s")

    async def demo_traffic(url: str) -> None:
        from tokentrace.producers.demo import post_demo_traffic

        await post_demo_traffic(url, demo_rate, config.http_server.auth_token)

    try:
        asyncio.run(serve_embedded(config, Path(config.storage.data_dir), demo_traffic if demo else None, started))
    except OSError as exc:
        fail(str(exc), 1)


#: Where ``tokentrace demo`` sends by default: a ``serve`` with the default ``http_server.addr`` on this machine.
DEFAULT_URL = f"http://127.0.0.1:{HTTPServerConfig().addr.rpartition(':')[2]}"


def demo(
    url: Annotated[str, typer.Option(help="Base URL of a running tokentrace server or API.")] = DEFAULT_URL,
    rate: Annotated[float, typer.Option(help="Spans per second.")] = DEMO_RATE,
    token: Annotated[str | None, typer.Option(envvar="TOKENTRACE_API_TOKEN", help="Bearer token.")] = None,
) -> None:
    """Send realistic demo traffic (models, callers, errors, agent traces, eval scores) to a server."""
    setup_logging(False)
    from tokentrace.producers.demo import post_demo_traffic

    console.print(f"sending ~{rate:g} spans/s to {url}/spans (Ctrl-C to stop)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(post_demo_traffic(url.rstrip("/"), rate, token))


def check_config(path: Annotated[Path, typer.Argument(help="tokentrace.yml to check.")]) -> None:
    """Check a configuration file and print the effective settings (TOKENTRACE_* variables applied)."""
    import msgspec

    config = settings(path)
    typer.echo(msgspec.json.format(msgspec.json.encode(config)).decode())


def check_data(
    path: Annotated[Path, typer.Argument(help="The data dir of `tokentrace serve` (storage.data_dir).")],
) -> None:
    """Verify a data dir offline (snapshots, log segments, quarantine); exit 1 when anything is damaged."""
    from tokentrace.api.stores.datacheck import check_data_dir

    if not path.is_dir():
        fail(f"{path} is not a directory")
    reports = check_data_dir(path)
    for report in reports:
        typer.echo(report.line())
    problems = sum(not report.ok for report in reports)
    if not reports:
        typer.echo(f"{path}: no snapshot, log segment or quarantined file (an empty data dir)")
    typer.echo(f"{len(reports)} files checked, {problems} with problems")
    if problems:
        raise typer.Exit(1)
