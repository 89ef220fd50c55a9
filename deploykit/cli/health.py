"""Health commands: ``doctor`` (risky settings) and ``probe`` (does each queue really work)."""

from __future__ import annotations

import functools
import os
import sys
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from deploykit.cli import app
from deploykit.cli.common import (
    AppOpt,
    BrokerOpt,
    BuildOpt,
    JsonOpt,
    ManagementOpt,
    TimeoutOpt,
    emit_json,
    handle_errors,
    merged_flags,
    resolve,
    use_redactor,
    warn,
)
from deploykit.config import parse_duration
from deploykit.errors import ExitCode, Unavailable, UsageError


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    info = "info"
    never = "never"


class Format(str, Enum):
    text = "text"
    json = "json"
    github = "github"


class ConfirmVia(str, Enum):
    auto = "auto"
    backend = "backend"
    events = "events"


PathsOpt = list[Path] | None
ReplyTimeoutOpt = Annotated[
    str | None,
    typer.Option(
        "--reply-timeout",
        metavar="DURATION",
        help="How long to wait for worker replies (default 1s; the root --timeout sets it too).",
        show_default=False,
    ),
]


@app.command()
def doctor(
    ctx: typer.Context,
    supervisor_conf: Annotated[
        PathsOpt,
        typer.Option(
            "--supervisor-conf",
            metavar="PATH",
            help="A supervisord config with the worker programs (repeatable).",
        ),
    ] = None,
    systemd_unit: Annotated[
        PathsOpt, typer.Option("--systemd-unit", metavar="PATH", help="A systemd service unit (repeatable).")
    ] = None,
    k8s_manifest: Annotated[
        PathsOpt,
        typer.Option(
            "--k8s-manifest",
            metavar="PATH",
            help="A Kubernetes Pod/Deployment/StatefulSet YAML (repeatable; needs PyYAML).",
        ),
    ] = None,
    fail_on: Annotated[
        FailOn, typer.Option("--fail-on", help="Exit 1 when a finding reaches this level.")
    ] = FailOn.error,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline", help="Audit the app's settings and the files only; ask no broker or worker."
        ),
    ] = False,
    format_: Annotated[
        Format | None,
        typer.Option("--format", help="Output format (default: github when GITHUB_ACTIONS=true, else text)."),
    ] = None,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    timeout: TimeoutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Find the settings that lose or duplicate tasks: app, live workers, broker, process managers.

    When the broker cannot be reached, the live part (workers, queues, policies) is skipped with
    one warning saying why, and the app and the files are still audited; the exit code follows
    the findings. --offline skips the live part on purpose.
    """
    from deploykit.doctor.checks import fails, run_checks
    from deploykit.doctor.gather import gather_audit, queue_defs_from_app, source_from_app
    from deploykit.doctor.process_managers import read_process_managers

    with handle_errors():
        managers, pm_notes = read_process_managers(
            supervisor_conf or (), systemd_unit or (), k8s_manifest or ()
        )
        flags = merged_flags(ctx, app_, broker, management_url, timeout)
        settings, user_app = resolve(flags, need_app=bool(flags.app))
        use_redactor(settings)
        # Snapshot the app before open_fleet() points it at the resolved broker options.
        app_source = source_from_app(user_app) if user_app is not None else None
        app_defs = queue_defs_from_app(user_app) if user_app is not None else []
        # What every audit is given; the live part adds the broker and the fleet.
        audit_of = functools.partial(
            gather_audit,
            app_source=app_source,
            app_queue_defs=app_defs,
            broker_url=settings.broker_url,
            now=datetime.now(timezone.utc),
            process_managers=managers,
            notes=pm_notes,
        )
        if offline:
            if app_source is None and not managers:
                raise UsageError("--offline needs an app (-A) or process-manager files to audit")
            audit = audit_of(broker=None, fleet=None, management_url=None)
        else:
            from deploykit.brokers import open_broker
            from deploykit.fleet import control_exchange, open_fleet

            try:
                with open_broker(settings) as opened_broker:
                    fleet = open_fleet(settings, user_app)
                    try:
                        audit = audit_of(
                            broker=opened_broker,
                            fleet=fleet,
                            management_url=settings.management_url,
                            control_exchange=control_exchange(user_app),
                            timeout=settings.timeout,
                        )
                    finally:
                        fleet.close()
            except Unavailable as unreachable:
                if app_source is None and not managers:
                    raise  # nothing else to audit: the broker was the whole point
                # Audit what needs no broker (the app's code and settings, the process-manager
                # files) and say, in one line, what was skipped and why.
                reason = unreachable.message.rstrip(".")
                skipped = f"live part skipped: {reason}; audited the app and the files only"
                warn(skipped)
                audit = audit_of(broker=None, fleet=None, management_url=None, offline_reason=skipped)
            if not audit.sources and not managers:
                raise Unavailable("no worker answered and no app was named with -A: nothing to audit")
        findings = run_checks(audit)
        failed = fails(findings, fail_on.value)
        if json_:
            output = Format.json
        elif format_ is not None:
            output = format_
        else:
            output = Format.github if os.environ.get("GITHUB_ACTIONS") == "true" else Format.text
        if output is Format.json:
            from deploykit.output.doctor import doctor_document
            from deploykit.output.documents import health_document

            body = doctor_document(audit, findings, fail_on=fail_on.value, failed=failed)
            emit_json(health_document("doctor", body, broker=settings.masked_broker_url))
        elif output is Format.github:
            from deploykit.output.doctor import render_doctor_github

            render_doctor_github(audit, findings, typer.echo)
        else:
            from deploykit.output.doctor import render_doctor_text
            from deploykit.output.text import console

            render_doctor_text(audit, findings, console())
        if failed:
            raise typer.Exit(int(ExitCode.UNSAFE))


@app.command()
def probe(
    ctx: typer.Context,
    queue: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            "-Q",
            metavar="QUEUE",
            help="Probe only these queues (repeatable; default: every queue with consumers).",
        ),
    ] = None,
    timeout: Annotated[
        str,
        typer.Option("--timeout", metavar="DURATION", help="How long to wait for the probes to run."),
    ] = "10s",
    confirm_via: Annotated[
        ConfirmVia,
        typer.Option("--confirm-via", help="auto: the result backend when usable, else task events."),
    ] = ConfirmVia.auto,
    build_ids: BuildOpt = None,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    reply_timeout: ReplyTimeoutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Send a probe task through each queue and wait until a worker has really run it.

    With --build, only the queues the workers of those builds consume (a probe goes to whichever
    consumer takes it: one that ran on another build is said in a note).
    """
    from deploykit.brokers import open_broker
    from deploykit.fleet import control_exchange, open_fleet
    from deploykit.inspection import app_queue_names, collect_queues
    from deploykit.orchestrate.common import validate_builds
    from deploykit.probe import consumers_of, run_probe
    from deploykit.probe.core import for_builds, judged_for_builds
    from deploykit.userapp import bare_app

    with handle_errors():
        deadline = parse_duration(timeout, what="--timeout")
        if deadline <= 0:
            raise UsageError("--timeout must be greater than 0")
        builds = validate_builds(build_ids or ())
        flags = merged_flags(ctx, app_, broker, management_url, reply_timeout)
        settings, user_app = resolve(flags, need_app=bool(flags.app))
        use_redactor(settings)
        with open_broker(settings) as opened_broker:
            fleet = open_fleet(settings, user_app)
            try:
                fleet_view = consumers_of(fleet, opened_broker, control_exchange(user_app), builds)
                view = collect_queues(opened_broker, fleet_view, app_queue_names(user_app), queue or ())
                rows = for_builds(view.queues, fleet_view.workers, builds) if builds else view.queues
                probe_app = user_app
                if probe_app is None:
                    assert settings.broker_url is not None
                    probe_app = bare_app(settings.broker_url, dict(settings.transport_options))
                report = run_probe(
                    user_app,
                    fleet,
                    rows,
                    requested=queue or (),
                    workers=[w.hostname for w in fleet_view.workers],
                    timeout=deadline,
                    confirm_via=confirm_via.value,
                    display_url=settings.masked_broker_url or "",
                    probe_app=probe_app,
                )
                if builds:
                    report = judged_for_builds(report, fleet_view.workers, builds)
            finally:
                fleet.close()
        if not report.results:
            raise Unavailable("no queue has consumers (no worker answered): nothing to probe")
        if json_:
            from deploykit.output.doctor import probe_document
            from deploykit.output.documents import health_document

            emit_json(health_document("probe", probe_document(report), broker=settings.masked_broker_url))
        else:
            from deploykit.output.doctor import render_probe_text
            from deploykit.output.text import console

            render_probe_text(report, console())
        if not report.ok:
            sys.stderr.flush()
            raise typer.Exit(int(ExitCode.UNSAFE))
