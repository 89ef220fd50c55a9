"""The ``deploykit`` command line: a thin typer app over the core.

Heavy imports (celery, kombu, redis, httpx, rich tables) happen inside the commands, so that
``deploykit --help`` stays fast.
"""

from __future__ import annotations

import os
import sys

import typer

from deploykit import __version__
from deploykit.cli.common import AppOpt, BrokerOpt, ManagementOpt, State, TimeoutOpt, start_redacting
from deploykit.config import CliFlags

app = typer.Typer(
    name="deploykit",
    help="Make Celery deploys safe: see what is in flight, catch breaking task-signature changes, "
    "drain and restart workers without losing tasks.\n\n"
    "Exit codes: 0 ok, 1 unsafe, 2 usage/configuration error, 3 timed out, 4 refused, "
    "5 incomplete, 69 unavailable, 70 internal error (a bug: please report it), 130 interrupted.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deploykit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    timeout: TimeoutOpt = None,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Options given here apply to every command (the command's own options win)."""
    env = os.environ
    start_redacting(
        broker,
        management_url,
        env.get("DEPLOYKIT_BROKER"),
        env.get("DEPLOYKIT_MANAGEMENT_URL"),
        env.get("CELERY_BROKER_URL"),
    )
    ctx.obj = State(CliFlags(app=app_, broker=broker, management_url=management_url, timeout=timeout))


# Registration order is the order of `deploykit --help`: inspection, manifest, scan, orchestration, health.
# isort: off
from deploykit.cli import inspect as _inspect  # noqa: E402,F401
from deploykit.cli import manifest as _manifest  # noqa: E402,F401
from deploykit.cli import scan as _scan  # noqa: E402,F401
from deploykit.cli import orchestrate as _orchestrate  # noqa: E402,F401
from deploykit.cli import health as _health  # noqa: E402,F401
# isort: on


def main() -> None:
    """Console-script entry point. An exception no command handled is a deploykit bug (exit 70)."""
    try:
        app()
    except Exception as exc:
        from deploykit.cli.common import report_internal_error

        sys.exit(report_internal_error(exc))
