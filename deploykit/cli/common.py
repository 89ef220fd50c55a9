"""What every command shares: the configuration options, error handling and exit codes.

Commands are thin: parse options, resolve :class:`~deploykit.config.Settings`, call one core
function, render, exit. A :class:`~deploykit.errors.DeploykitError` becomes one line on stderr
and its exit code; anything else is a bug: a short message, the traceback (without locals,
passwords scrubbed), an invitation to report it, exit 70.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from deploykit.brokers.urls import Redactor
from deploykit.config import CliFlags, Settings, resolve_settings
from deploykit.errors import DeploykitError, ExitCode

if TYPE_CHECKING:
    from celery import Celery

    from deploykit.brokers.base import Broker
    from deploykit.fleet.base import Fleet
    from deploykit.output.documents import Json

AppOpt = Annotated[
    str | None,
    typer.Option(
        "-A",
        "--app",
        metavar="MODULE[:ATTR]",
        help="Celery app to import, like `celery -A` [env: DEPLOYKIT_APP].",
        show_default=False,
    ),
]
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "-b",
        "--broker",
        metavar="URL",
        help="Broker URL (default: the app's broker_url, then CELERY_BROKER_URL) [env: DEPLOYKIT_BROKER].",
        show_default=False,
    ),
]
ManagementOpt = Annotated[
    str | None,
    typer.Option(
        "--management-url",
        metavar="URL",
        help="RabbitMQ management API (default: broker host, port 15672, same credentials) "
        "[env: DEPLOYKIT_MANAGEMENT_URL].",
        show_default=False,
    ),
]
TimeoutOpt = Annotated[
    str | None,
    typer.Option(
        "--timeout",
        metavar="DURATION",
        help="How long to wait for worker replies: 1, 2.5s, 500ms (default 1s) [env: DEPLOYKIT_TIMEOUT].",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
QueueOpt = Annotated[
    list[str] | None,
    typer.Option("--queue", "-Q", metavar="QUEUE", help="Only these queues (repeatable)."),
]
# Reading RabbitMQ's waiting messages (scan, builds): it has no read that leaves them in place.
PeekOpt = Annotated[
    bool,
    typer.Option(
        "--peek", help="Sample RabbitMQ queues through the management API (requeues: sets redelivered)."
    ),
]
PeekLimitOpt = Annotated[int, typer.Option("--peek-limit", metavar="N", help="Messages to peek per queue.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Allow --peek on quorum queues (reorders them).")]
RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        metavar="DIR",
        envvar="DEPLOYKIT_REGISTRY",
        help="The manifest registry kept in this directory (one JSON file per build) instead of the "
        "broker's own (for brokers with no place for it) [env: DEPLOYKIT_REGISTRY].",
        show_default=False,
        show_envvar=False,
    ),
]
BuildOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--build",
        metavar="ID",
        help="Only workers advertising this build (repeatable; with -w: both must match). A build no "
        "live worker advertises is exit 2, naming the live builds.",
        show_default=False,
    ),
]


@dataclass(frozen=True)
class State:
    """Options given before the command name (``deploykit -A proj status``)."""

    flags: CliFlags = field(default_factory=CliFlags)


def merged_flags(
    ctx: typer.Context,
    app: str | None = None,
    broker: str | None = None,
    management_url: str | None = None,
    timeout: str | None = None,
) -> CliFlags:
    """Command-level options win over the same options given before the command name."""
    base = ctx.obj.flags if isinstance(ctx.obj, State) else CliFlags()
    remember_secrets(broker, management_url)
    return replace(
        base,
        app=app if app is not None else base.app,
        broker=broker if broker is not None else base.broker,
        management_url=management_url if management_url is not None else base.management_url,
        timeout=timeout if timeout is not None else base.timeout,
    )


def load_user_app(spec: str) -> Celery:
    """Load the app as a worker does (:func:`deploykit.userapp.load_app`), the same way for every
    command; what went wrong quietly while loading (a signal handler that raised) is a warning."""
    from deploykit.userapp import load_app

    return load_app(spec, warn=warn)


def resolve(flags: CliFlags, *, need_app: bool = False) -> tuple[Settings, Celery | None]:
    """Resolve settings (importing the app only when needed)."""
    return resolve_settings(flags, load_app=load_user_app, need_app=need_app)


@dataclass
class Session:
    """What a broker command needs, opened once: the settings, the app (if named), the broker
    and, unless asked not to, the workers' remote control."""

    settings: Settings
    app: Celery | None
    broker: Broker
    fleet: Fleet | None

    @property
    def control_exchange(self) -> str:
        from deploykit.fleet import control_exchange

        return control_exchange(self.app)

    @property
    def workers(self) -> Fleet:
        """The fleet of a session opened with it (:func:`open_session`'s default)."""
        assert self.fleet is not None, "this session was opened without the fleet"
        return self.fleet


@contextlib.contextmanager
def open_session(flags: CliFlags, *, with_fleet: bool = True) -> Iterator[Session]:
    """Resolve the settings, open the broker and (``with_fleet``) the fleet; close them after."""
    from deploykit.brokers import open_broker
    from deploykit.fleet import open_fleet

    settings, user_app = resolve(flags)
    use_redactor(settings)
    if settings.app and user_app is None:
        # The broker came from a flag/env/pyproject; the app still defines queues and routes.
        settings, user_app = resolve(flags, need_app=True)
    broker = open_broker(settings)
    fleet = open_fleet(settings, user_app) if with_fleet else None
    try:
        yield Session(settings, user_app, broker, fleet)
    finally:
        if fleet is not None:
            fleet.close()
        broker.close()


#: typer's control flow (``typer.Exit``, ``typer.Abort``, click's usage errors), never a bug. Newer
#: typer vendors click, so click's ``ClickException`` is found through ``typer.BadParameter``.
_TYPER_EXITS: tuple[type[BaseException], ...] = (
    typer.Exit,
    typer.Abort,
    next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"),
)

#: Where a deploykit bug (exit 70) is reported.
ISSUES_URL = "https://github.com/deploykit/deploykit/issues"

_redactor = Redactor()


def start_redacting(*urls: str | None) -> None:
    """A new command line: forget the previous one's secrets (tests run many in one process) and
    scrub the passwords of ``urls`` from everything shown from now on."""
    global _redactor
    _redactor = Redactor()
    remember_secrets(*urls)


def remember_secrets(*urls: str | None) -> None:
    """Also scrub the passwords of ``urls`` from everything shown from now on."""
    for url in urls:
        _redactor.add_url(url)


def use_redactor(settings: Settings) -> Redactor:
    """Make every message from now on scrub this configuration's secrets too."""
    remember_secrets(settings.broker_url, settings.management_url)
    return _redactor


def error(message: str) -> None:
    """One line on stderr, secrets scrubbed."""
    typer.echo(f"deploykit: error: {_redactor(message)}", err=True)


def say(line: str) -> None:
    """One line of a command's text result on stdout, secrets scrubbed."""
    typer.echo(_redactor(line))


def warn(message: str) -> None:
    typer.echo(f"deploykit: warning: {_redactor(message)}", err=True)


def report_internal_error(exc: BaseException) -> int:
    """A deploykit bug: a short message, the traceback (no locals, passwords scrubbed) and where
    to report it, on stderr. Returns the exit code, 70."""
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    summary = _redactor(f"{type(exc).__name__}: {exc}").splitlines()[0]
    typer.echo(f"deploykit: internal error: {summary}", err=True)
    typer.echo(_redactor(text).rstrip(), err=True)
    typer.echo(
        "deploykit: this is a bug in deploykit, not a problem with your setup; please report it "
        f"with the traceback above at {ISSUES_URL}",
        err=True,
    )
    return int(ExitCode.INTERNAL)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Turn deploykit errors and Ctrl-C into a one-line message and the documented exit code;
    anything else is a bug (:func:`report_internal_error`, exit 70)."""
    try:
        yield
    except DeploykitError as exc:
        error(exc.message)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        error("interrupted")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except _TYPER_EXITS:
        raise  # typer's own exits and usage errors
    except Exception as exc:
        raise typer.Exit(report_internal_error(exc)) from None


def emit_json(document: Json) -> None:
    """Write one JSON document on stdout (secrets scrubbed)."""
    from deploykit.output.jsonout import dumps

    sys.stdout.write(_redactor(dumps(document)) + "\n")
    sys.stdout.flush()


def color_enabled() -> bool:
    """Colour only on a TTY, never when ``NO_COLOR`` is set and non-empty."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return sys.stdout.isatty()
