"""The ``tokentrace`` command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tokentrace.config import Config, ConfigError, load_config

__all__ = ["app", "main"]

app = typer.Typer(help="Token-level observability for LLM inference.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="tokentrace.yml to read.", dir_okay=False, exists=False)
]


def _load(config_path: Path | None) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def serve(
    config_path: ConfigOption = None,
    addr: Annotated[str | None, typer.Option(help="Listen address, e.g. :9090 or 127.0.0.1:9090.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the log and snapshots live.")] = None,
    max_spans: Annotated[int | None, typer.Option(help="Spans kept for /traces (oldest traces go first).")] = None,
    demo: Annotated[bool, typer.Option(help="Also generate demo traffic into this server.")] = False,
    demo_rate: Annotated[float, typer.Option(help="Demo spans per second.")] = 20.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the embedded server: ingest, aggregation, alerts and the HTTP API in one process."""
    _logging(verbose)
    config = _load(config_path)
    if addr is not None:
        config.http_server.addr = addr
    if data_dir is not None:
        config.storage.data_dir = str(data_dir)
    if max_spans is not None:
        if max_spans < 1:
            console.print("[red]error:[/red] --max-spans must be >= 1")
            raise typer.Exit(2)
        config.storage.max_spans = max_spans
    from tokentrace.api.embedded import serve_embedded
    from tokentrace.api.server import parse_addr

    try:
        parse_addr(config.http_server.addr)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None

    async def started(url: str) -> None:
        console.print(f"[bold green]tokentrace[/bold green] serving on {url}  (data: {config.storage.data_dir})")
        local = url.replace("0.0.0.0", "127.0.0.1")
        console.print(f"  web console: open {local}/ in a browser")
        console.print(f"  try: curl {local}/metrics?window=1h   ·   {local}/metrics/prometheus   ·   {local}/health")
        if demo:
            console.print(f"  demo traffic: ~{demo_rate:g} spans/s")

    try:
        asyncio.run(serve_embedded(config, Path(config.storage.data_dir), demo_rate if demo else None, started))
    except OSError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def demo(
    url: Annotated[str, typer.Option(help="Base URL of a running tokentrace server or API.")] = "http://127.0.0.1:9090",
    rate: Annotated[float, typer.Option(help="Spans per second.")] = 20.0,
    token: Annotated[str | None, typer.Option(envvar="TOKENTRACE_API_TOKEN", help="Bearer token.")] = None,
) -> None:
    """Send realistic demo traffic (models, callers, errors, agent traces, eval scores) to a server."""
    _logging(False)
    from tokentrace.producers.demo import post_demo_traffic

    console.print(f"sending ~{rate:g} spans/s to {url}/spans (Ctrl-C to stop)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(post_demo_traffic(url.rstrip("/"), rate, token))


@app.command("check-config")
def check_config(path: Annotated[Path, typer.Argument(help="tokentrace.yml to check.")]) -> None:
    """Check a configuration file and print the effective settings."""
    import msgspec

    config = _load(path)
    typer.echo(msgspec.json.format(msgspec.json.encode(config)).decode())


@app.command("check-data")
def check_data(
    path: Annotated[Path, typer.Argument(help="The data dir of `tokentrace serve` (storage.data_dir).")],
) -> None:
    """Verify a data dir offline (snapshots, log segments, quarantine); exit 1 when anything is damaged."""
    from tokentrace.api.stores.datacheck import check_data_dir

    if not path.is_dir():
        console.print(f"[red]error:[/red] {path} is not a directory")
        raise typer.Exit(2)
    reports = check_data_dir(path)
    for report in reports:
        typer.echo(report.line())
    problems = sum(not report.ok for report in reports)
    if not reports:
        typer.echo(f"{path}: no snapshot, log segment or quarantined file (an empty data dir)")
    typer.echo(f"{len(reports)} files checked, {problems} with problems")
    if problems:
        raise typer.Exit(1)


def _register_distributed() -> None:
    """``tokentrace worker`` and ``tokentrace api`` (distributed mode; heavy imports happen inside them)."""
    from tokentrace.processors.cli import api, worker

    app.command("worker")(worker)
    app.command("api")(api)


def _register_dev_cluster() -> None:
    """``tokentrace dev-cluster`` (the whole distributed mode on this machine)."""
    from tokentrace.devcluster.command import dev_cluster

    app.command("dev-cluster")(dev_cluster)


_register_distributed()
_register_dev_cluster()


def main() -> None:
    app()
