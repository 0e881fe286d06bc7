"""The ``tokentrace`` command: one Typer app, every subcommand registered here and nowhere else.

``serve``, ``demo``, ``check-config``, ``check-data`` (embedded mode, ``tokentrace.cli.embedded``), ``worker``
and ``api`` (distributed mode, ``tokentrace.cli.distributed``) and ``dev-cluster`` (``tokentrace.cli.devcluster``). The command modules import only Typer and the settings module at import
time; each command imports what it runs when it runs. Settings: ``tokentrace.config.load_settings``.
"""

from __future__ import annotations

import typer

from tokentrace.cli.devcluster import dev_cluster
from tokentrace.cli.distributed import api, worker
from tokentrace.cli.embedded import check_config, check_data, demo, serve

__all__ = ["app", "main"]

app = typer.Typer(help="Token-level observability for LLM inference.", no_args_is_help=True, add_completion=False)
app.command()(serve)
app.command()(demo)
app.command("check-config")(check_config)
app.command("check-data")(check_data)
app.command()(worker)
app.command()(api)
app.command("dev-cluster")(dev_cluster)


def main() -> None:
    app()
