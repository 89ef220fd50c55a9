"""Read commands: ``workers``, ``queues``, ``scheduled``, ``status``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any

import typer

from deploykit.cli import app
from deploykit.cli.common import (
    AppOpt,
    BrokerOpt,
    JsonOpt,
    ManagementOpt,
    TimeoutOpt,
    emit_json,
    handle_errors,
    merged_flags,
    resolve,
    use_redactor,
)
from deploykit.config import CliFlags, Settings, parse_duration
from deploykit.errors import ExitCode

SCHEMA_VERSION = 1


@dataclass
class Session:
    """Everything a read command needs, opened once."""

    settings: Settings
    app: Any
    broker: Any
    fleet: Any

    @property
    def control_exchange(self) -> str:
        from deploykit.fleet import control_exchange

        return control_exchange(self.app)


@contextlib.contextmanager
def open_session(flags: CliFlags, *, with_fleet: bool = True) -> Iterator[Session]:
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


def _document(kind: str, session: Session, body: Any) -> dict[str, Any]:
    return {
        "schema": f"deploykit.{kind}/{SCHEMA_VERSION}",
        "broker": session.settings.masked_broker_url,
        "generated_at": datetime.now(timezone.utc),
        **body,
    }


@app.command()
def workers(
    ctx: typer.Context,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    timeout: TimeoutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Every worker online: pid, pool, concurrency, queues, active/reserved/ETA counts, uptime, version."""
    from deploykit.inspection import collect_fleet

    with handle_errors():
        flags = merged_flags(ctx, app_, broker, management_url, timeout)
        with open_session(flags) as session:
            view = collect_fleet(session.fleet, session.broker, session.control_exchange)
        if json_:
            emit_json(_document("workers", session, {"workers": view.workers, "discovery": view.discovery}))
        else:
            from deploykit.output.text import console, render_workers

            render_workers(view, console())
        if not view.workers:
            raise typer.Exit(int(ExitCode.UNAVAILABLE))


@app.command()
def queues(
    ctx: typer.Context,
    queue: Annotated[
        list[str] | None,
        typer.Option("--queue", "-Q", metavar="QUEUE", help="Only these queues (repeatable)."),
    ] = None,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    timeout: TimeoutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Each queue: ready, unacked, ETA tasks held by workers, consumers, type."""
    from deploykit.inspection import app_queue_names, collect_fleet, collect_queues

    with handle_errors():
        flags = merged_flags(ctx, app_, broker, management_url, timeout)
        with open_session(flags) as session:
            fleet_view = collect_fleet(session.fleet, session.broker, session.control_exchange)
            view = collect_queues(session.broker, fleet_view, app_queue_names(session.app), queue or ())
        if json_:
            emit_json(
                _document(
                    "queues",
                    session,
                    {
                        "queues": view.queues,
                        "source": view.source,
                        "notes": view.notes,
                        "delayed": view.delayed,
                    },
                )
            )
        else:
            from deploykit.output.text import console, render_queues

            render_queues(view, console())


@app.command()
def scheduled(
    ctx: typer.Context,
    within: Annotated[
        str | None,
        typer.Option("--within", metavar="DURATION", help="Only tasks due within this window, e.g. 15m."),
    ] = None,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    timeout: TimeoutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Every ETA/countdown task, wherever it waits (held by a worker, or still in a queue), sorted by
    due time, with its hazards."""
    from deploykit.inspection import app_queue_names, collect_fleet, collect_queues, collect_scheduled

    with handle_errors():
        window = parse_duration(within, what="--within") if within is not None else None
        flags = merged_flags(ctx, app_, broker, management_url, timeout)
        with open_session(flags) as session:
            fleet_view = collect_fleet(session.fleet, session.broker, session.control_exchange)
            queues_view = collect_queues(session.broker, fleet_view, app_queue_names(session.app))
            view = collect_scheduled(
                session.broker,
                fleet_view,
                datetime.now(timezone.utc),
                window,
                delayed=queues_view.delayed,
                queues=queues_view.queues,
            )
        if json_:
            emit_json(
                _document(
                    "scheduled",
                    session,
                    {
                        "scheduled": view.entries,
                        "delayed": view.delayed,
                        "waiting_eta": view.waiting,
                        "broker_settings": view.settings,
                        "notes": view.notes,
                        "workers": [w.hostname for w in fleet_view.workers],
                    },
                )
            )
        else:
            from deploykit.output.text import console, render_scheduled

            render_scheduled(view, console())


@app.command()
def status(
    ctx: typer.Context,
    fail_if_busy: Annotated[
        bool, typer.Option("--fail-if-busy", help="Exit 1 when anything is in flight (for deploy scripts).")
    ] = False,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    timeout: TimeoutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """One screen before a release: workers, queues, scheduled tasks, hazards and a verdict."""
    from deploykit.inspection import app_queue_names, collect_status

    with handle_errors():
        flags = merged_flags(ctx, app_, broker, management_url, timeout)
        with open_session(flags) as session:
            view = collect_status(
                session.broker,
                session.fleet,
                datetime.now(timezone.utc),
                app_queue_names(session.app),
                session.control_exchange,
            )
        if json_:
            emit_json(
                _document(
                    "status",
                    session,
                    {
                        "verdict": view.verdict,
                        "workers": view.fleet.workers,
                        "discovery": view.fleet.discovery,
                        "queues": view.queues.queues,
                        "queue_source": view.queues.source,
                        "notes": [*view.queues.notes, *view.scheduled.notes],
                        "delayed": view.queues.delayed,
                        "scheduled": view.scheduled.entries,
                        "waiting_eta": view.scheduled.waiting,
                        "hazards": view.hazards,
                    },
                )
            )
        else:
            from deploykit.output.text import console, render_status

            render_status(view, console())
        if fail_if_busy and view.verdict.busy:
            raise typer.Exit(int(ExitCode.UNSAFE))
