"""Read commands: ``workers``, ``queues``, ``scheduled``, ``status``, ``builds``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from deploykit.cli import app
from deploykit.cli.common import (
    AppOpt,
    BrokerOpt,
    ForceOpt,
    JsonOpt,
    ManagementOpt,
    PeekLimitOpt,
    PeekOpt,
    QueueOpt,
    RegistryOpt,
    TimeoutOpt,
    emit_json,
    handle_errors,
    merged_flags,
    open_session,
)
from deploykit.config import parse_duration
from deploykit.errors import ExitCode

if TYPE_CHECKING:
    from deploykit.brokers.base import Broker
    from deploykit.registry import RegistryEntry


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
            view = collect_fleet(session.workers, session.broker, session.control_exchange)
        if json_:
            from deploykit.output.documents import workers_document

            emit_json(workers_document(view, broker=session.settings.masked_broker_url))
        else:
            from deploykit.output.text import console, render_workers

            render_workers(view, console())
        if not view.workers:
            raise typer.Exit(int(ExitCode.UNAVAILABLE))


@app.command()
def queues(
    ctx: typer.Context,
    queue: QueueOpt = None,
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
            fleet_view = collect_fleet(session.workers, session.broker, session.control_exchange)
            view = collect_queues(session.broker, fleet_view, app_queue_names(session.app), queue or ())
        if json_:
            from deploykit.output.documents import queues_document

            emit_json(queues_document(view, broker=session.settings.masked_broker_url))
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
            fleet_view = collect_fleet(session.workers, session.broker, session.control_exchange)
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
            from deploykit.output.documents import scheduled_document

            emit_json(scheduled_document(view, fleet_view, broker=session.settings.masked_broker_url))
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
                session.workers,
                datetime.now(timezone.utc),
                app_queue_names(session.app),
                session.control_exchange,
            )
        if json_:
            from deploykit.output.documents import status_document

            emit_json(status_document(view, broker=session.settings.masked_broker_url))
        else:
            from deploykit.output.text import console, render_status

            render_status(view, console())
        if fail_if_busy and view.verdict.busy:
            raise typer.Exit(int(ExitCode.UNSAFE))


@app.command()
def builds(
    ctx: typer.Context,
    queue: QueueOpt = None,
    peek: PeekOpt = False,
    peek_limit: PeekLimitOpt = 100,
    force: ForceOpt = False,
    registry: RegistryOpt = None,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    timeout: TimeoutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Every live build: its workers, its waiting messages by location, the latest ETA, whether its
    manifest is known, and its state (active, draining, drained).

    Exit 0; 5 when some waiting messages could not be read (RabbitMQ without --peek, beyond
    --peek-limit), so their builds are not counted; 69 when the broker cannot be reached.
    """
    from deploykit.builds import collect_builds
    from deploykit.celery import installed_build
    from deploykit.errors import UsageError
    from deploykit.inspection import collect_fleet
    from deploykit.manifest.model import Manifest
    from deploykit.scan.run import PeekOptions, queues_to_scan

    with handle_errors():
        if peek_limit < 1:
            raise UsageError("--peek-limit must be at least 1")
        flags = merged_flags(ctx, app_, broker, management_url, timeout)
        with (
            open_session(flags) as session,
            _registry_entries(session.broker, registry) as (entries, location),
        ):
            fleet_view = collect_fleet(session.workers, session.broker, session.control_exchange)
            names = queues_to_scan(session.broker, Manifest({}), session.app, given=queue or (), peek=peek)
            view = collect_builds(
                session.broker,
                fleet_view,
                queues=names,
                registry=entries,
                registry_location=location,
                app=session.app,
                app_build=installed_build(session.app) if session.app is not None else None,
                peek=PeekOptions(peek_limit, force) if peek else None,
            )
        if json_:
            from deploykit.output.documents import builds_document

            emit_json(builds_document(view, broker=session.settings.masked_broker_url))
        else:
            from deploykit.output.builds import render_builds
            from deploykit.output.text import console

            render_builds(view, console())
        if view.incomplete:
            raise typer.Exit(int(ExitCode.INCOMPLETE))


@contextlib.contextmanager
def _registry_entries(
    broker: Broker, directory: Path | None
) -> Iterator[tuple[Callable[[], Sequence[RegistryEntry]], str | None]]:
    """The registry's listing and where it lives; a broker with no place for one gives a listing
    that raises why (``builds`` says it in a note and leaves the manifests unknown)."""
    from deploykit.brokers.manifest_store import open_manifest_store
    from deploykit.errors import UsageError
    from deploykit.registry import ManifestRegistry

    try:
        store = open_manifest_store(broker, directory=directory)
    except UsageError as problem:
        no_store = problem

        def refuse() -> list[RegistryEntry]:
            raise no_store

        yield refuse, None
        return
    try:
        yield ManifestRegistry(store).entries, store.location
    finally:
        store.close()
