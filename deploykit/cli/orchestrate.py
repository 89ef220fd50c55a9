"""Fleet-changing commands: ``drain``, ``resume``, ``shutdown``, ``restart``.

Thin: parse options, open a session, run one orchestration machine, render its result, exit with
its code. Ctrl-C and SIGTERM become ``KeyboardInterrupt`` once (the machine then undoes what it
did); further signals are ignored until the undo finished, so the undo cannot itself be cut short.

``--timeout`` on these commands is the overall deadline (``drain --timeout 10m``); the time to wait
for worker replies is the root option: ``deploykit --timeout 2s drain …``.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Protocol, TypeVar

import typer

from deploykit.cli import app
from deploykit.cli.common import (
    AppOpt,
    BrokerOpt,
    BuildOpt,
    JsonOpt,
    ManagementOpt,
    Session,
    emit_json,
    error,
    handle_errors,
    merged_flags,
    open_session,
    say,
    warn,
)
from deploykit.config import parse_duration
from deploykit.errors import DeploykitError, UsageError

if TYPE_CHECKING:
    from deploykit.brokers.records import RecordStore
    from deploykit.output.documents import Json
    from deploykit.output.progress import ProgressDisplay

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

WorkerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--worker",
        "-w",
        metavar="PATTERN",
        help="Only workers whose node name matches this glob (repeatable): 'w1@*', '*@web-3', 'w1'. "
        "Default: every worker.",
    ),
]
QueueOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--queue", "-Q", metavar="QUEUE", help="Only this queue (repeatable). Default: all it consumes."
    ),
]
DeadlineOpt = Annotated[
    str | None,
    typer.Option(
        "--timeout",
        metavar="DURATION",
        help="Give up after this long: 90, 30s, 10m, 1h (default: wait forever for drain, 60s for shutdown).",
        show_default=False,
    ),
]
MinConsumersOpt = Annotated[
    int | None,
    typer.Option(
        "--min-consumers",
        metavar="N",
        min=1,
        help="Refuse (exit 4, nothing changed) if a queue would be left with fewer than N consumers.",
    ),
]
RecordTtlOpt = Annotated[
    str,
    typer.Option(
        "--record-ttl", metavar="DURATION", help="Keep the record of cancelled consumers this long."
    ),
]
ExpectBuildOpt = Annotated[
    str | None,
    typer.Option(
        "--expect-build",
        metavar="ID",
        help="A worker counts as back only when it advertises this build (the new release's "
        "DEPLOYKIT_BUILD); one that comes back on another build, or none, is a failure (exit 1).",
        show_default=False,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No live progress on stderr.")]


# -- plumbing ---------------------------------------------------------------------------------
class _Signals:
    """SIGINT/SIGTERM raise KeyboardInterrupt once; later ones are ignored while we clean up."""

    def __init__(self) -> None:
        self.fired = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.fired:
            warn("still putting things back, please wait")
            return
        self.fired = True
        raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[_Signals]:
    signals = _Signals()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, signals.handler)
    try:
        yield signals
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _duration(value: str | None, what: str) -> float | None:
    if value is None or value.strip().lower() in {"", "0", "none", "forever"}:
        return None
    return parse_duration(value, what=what)


def _records(session: Session, ttl: str) -> RecordStore:
    from deploykit.brokers.records import open_record_store

    return open_record_store(
        session.broker,
        control_exchange=session.control_exchange,
        ttl=parse_duration(ttl, what="--record-ttl"),
        timeout=session.settings.timeout,
    )


def _progress(quiet: bool) -> ProgressDisplay:
    from deploykit.output.progress import ProgressDisplay

    return ProgressDisplay(enabled=not quiet)


class _Machine(Protocol[T_co]):
    def run(self) -> T_co: ...


class _Outcome(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def exit_code(self) -> int: ...
    @property
    def message(self) -> str: ...


def _run_machine(
    build: Callable[[], _Machine[T]], display: ProgressDisplay, records: RecordStore | None
) -> T:
    """Build a machine and run it under :func:`interruptible`; return its result.

    ``build`` runs inside the ``try`` so that however it ends (a usage error while building
    included) the live progress line is ended and the record store closed.
    """
    try:
        machine = build()
        with interruptible():
            return machine.run()
    finally:
        display.finish()
        if records is not None:
            records.close()


def _report(result: _Outcome, *, json_: bool, document: Callable[[], Json], text: Callable[[], None]) -> None:
    """Print the result (``--json``: ``document()``, else ``text()``), then exit with its code if
    it failed (its ``status: message`` once, as the error line on stderr)."""
    if json_:
        emit_json(document())
    else:
        text()
    if result.exit_code:
        error(f"{result.status}: {result.message}")
        raise typer.Exit(int(result.exit_code))


# -- drain ------------------------------------------------------------------------------------
@app.command()
def drain(
    ctx: typer.Context,
    worker: WorkerOpt = None,
    build_ids: BuildOpt = None,
    queue: QueueOpt = None,
    timeout: DeadlineOpt = None,
    min_consumers: MinConsumersOpt = None,
    wait_eta: Annotated[
        bool, typer.Option("--wait-eta", help="Also wait for held ETA tasks that are due before the timeout.")
    ] = False,
    until_empty: Annotated[
        bool,
        typer.Option(
            "--until-empty",
            help="Cancel nothing: wait until the queues are empty (ready + unacked + held by workers).",
        ),
    ] = False,
    incompatible_with: Annotated[
        str | None,
        typer.Option(
            "--incompatible-with",
            metavar="MANIFEST",
            help="With --until-empty: wait only until no waiting message is one the new release (this "
            "manifest) would fail, misbind or discard (runs the scan every second; needs a broker whose "
            "queues can be read without consuming them: Redis).",
        ),
    ] = None,
    rollback_on_timeout: Annotated[
        bool,
        typer.Option(
            "--rollback-on-timeout", help="On timeout, re-add the consumers instead of staying quiet."
        ),
    ] = False,
    record_ttl: RecordTtlOpt = "7d",
    quiet: QuietOpt = False,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Stop intake (cancel consumers), then wait until the workers hold no active or reserved task.

    Every cancelled consumer is recorded in the broker first, so `deploykit resume` undoes exactly
    this drain, from any machine. Ctrl-C/SIGTERM re-adds them and exits 130.

    Exit codes: 0 drained, 1 a worker failed (did not confirm the cancel, or vanished), 2 usage (a
    --build no live worker runs), 3 timed out (the workers stay quiet unless --rollback-on-timeout),
    4 refused by --min-consumers (nothing changed), 69 no selected worker answers, 130 interrupted.
    """
    from deploykit.orchestrate.common import Timing, validate_builds
    from deploykit.orchestrate.compat import incompatible_counter
    from deploykit.orchestrate.drain import DrainMachine, DrainOptions
    from deploykit.output.documents import drain_document
    from deploykit.output.orchestrate import render_drain

    with handle_errors():
        if incompatible_with is not None and not until_empty:
            raise UsageError("--incompatible-with narrows --until-empty: pass both")
        if until_empty and (min_consumers or rollback_on_timeout):
            raise UsageError(
                "--until-empty cancels nothing: --min-consumers/--rollback-on-timeout do not apply"
            )
        options_timeout = _duration(timeout, "--timeout")
        builds = validate_builds(build_ids or ())
        flags = merged_flags(ctx, app_, broker, management_url, None)
        with open_session(flags) as session:
            records = _records(session, record_ttl)
            display = _progress(quiet)

            def build() -> DrainMachine:
                options = DrainOptions(
                    workers=tuple(worker or ()),
                    builds=builds,
                    queues=tuple(queue or ()),
                    timeout=options_timeout,
                    min_consumers=min_consumers,
                    wait_eta=wait_eta,
                    until_empty=until_empty,
                    rollback_on_timeout=rollback_on_timeout,
                    control_exchange=session.control_exchange,
                )
                counter = (
                    incompatible_counter(session.broker, session.workers, Path(incompatible_with))
                    if incompatible_with
                    else None
                )
                return DrainMachine(
                    session.workers,
                    session.broker,
                    records,
                    options,
                    timing=Timing(),
                    progress=display,
                    incompatible=counter,
                )

            result = _run_machine(build, display, records)
        broker_url, record = session.settings.masked_broker_url, records.location
        _report(
            result,
            json_=json_,
            document=lambda: drain_document(result, broker=broker_url, record=record),
            text=lambda: render_drain(result, say),
        )


# -- resume -----------------------------------------------------------------------------------
@app.command()
def resume(
    ctx: typer.Context,
    worker: WorkerOpt = None,
    build_ids: BuildOpt = None,
    forget_missing: Annotated[
        bool,
        typer.Option(
            "--forget-missing",
            help="Drop record entries of workers that do not answer (restarted or gone: they consume anew).",
        ),
    ] = False,
    record_ttl: RecordTtlOpt = "7d",
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Re-add exactly the consumers `drain` cancelled (as recorded in the broker), then clear the record.

    Exit codes: 0 resumed (or nothing to do), 2 usage (a --build no live worker runs), 69 some
    workers did not answer (their entries are kept).
    """
    from deploykit.orchestrate.common import validate_builds
    from deploykit.orchestrate.resume import resume as run_resume
    from deploykit.output.documents import resume_document
    from deploykit.output.orchestrate import render_resume

    with handle_errors():
        builds = validate_builds(build_ids or ())
        flags = merged_flags(ctx, app_, broker, management_url, None)
        with open_session(flags) as session:
            records = _records(session, record_ttl)
            try:
                with interruptible():
                    result = run_resume(
                        session.workers,
                        records,
                        tuple(worker or ()),
                        forget_missing=forget_missing,
                        builds=builds,
                        broker=session.broker,
                        control_exchange=session.control_exchange,
                    )
            finally:
                records.close()
        broker_url = session.settings.masked_broker_url
        _report(
            result,
            json_=json_,
            document=lambda: resume_document(result, broker=broker_url),
            text=lambda: render_resume(result, say),
        )


# -- shutdown ---------------------------------------------------------------------------------
@app.command()
def shutdown(
    ctx: typer.Context,
    worker: WorkerOpt = None,
    build_ids: BuildOpt = None,
    timeout: DeadlineOpt = None,
    quiet: QuietOpt = False,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Warm shutdown through remote control, then verify what the workers held is back in the broker.

    Running tasks finish; reserved, prefetched and ETA messages return to the broker (Redis: they
    leave the 'unacked' hash; RabbitMQ: the queues' ready count rises at once, or the unacked statistics
    fall back) and are counted. There is no
    cold shutdown or kill: those lose running tasks that are not acks_late.

    Exit codes: 0 done, 2 usage (a --build no live worker runs), 3 timed out (workers still answer,
    or messages not back yet), 69 no selected worker answers, 130 interrupted (a shutdown already
    sent is not taken back).
    """
    from deploykit.orchestrate.common import Timing, validate_builds
    from deploykit.orchestrate.shutdown import ShutdownMachine, ShutdownOptions
    from deploykit.output.documents import shutdown_document
    from deploykit.output.orchestrate import render_shutdown

    with handle_errors():
        deadline = _duration(timeout, "--timeout") if timeout is not None else 60.0
        builds = validate_builds(build_ids or ())
        flags = merged_flags(ctx, app_, broker, management_url, None)
        with open_session(flags) as session:
            display = _progress(quiet)
            try:  # only to tidy the record afterwards: never a reason not to shut down
                records = _records(session, "7d")
            except DeploykitError:
                records = None

            def build() -> ShutdownMachine:
                options = ShutdownOptions(
                    workers=tuple(worker or ()),
                    builds=builds,
                    timeout=deadline,
                    control_exchange=session.control_exchange,
                )
                return ShutdownMachine(
                    session.workers,
                    session.broker,
                    options,
                    timing=Timing(),
                    progress=display,
                    records=records,
                )

            result = _run_machine(build, display, records)
        broker_url = session.settings.masked_broker_url
        _report(
            result,
            json_=json_,
            document=lambda: shutdown_document(result, broker=broker_url),
            text=lambda: render_shutdown(result, say),
        )


# -- restart ----------------------------------------------------------------------------------
@app.command()
def restart(
    ctx: typer.Context,
    worker: WorkerOpt = None,
    build_ids: BuildOpt = None,
    batch: Annotated[
        int, typer.Option("--batch", metavar="N", min=1, help="Workers restarted at a time.")
    ] = 1,
    min_consumers: MinConsumersOpt = None,
    exec_: Annotated[
        str | None,
        typer.Option(
            "--exec",
            metavar="'COMMAND TEMPLATE'",
            help="Run this to start each worker again, after deploykit shut it down warmly. Split like a "
            "shell line but run without a shell (write `sh -c '…'` for one). Placeholders: {nodename} "
            "(w1@host), {name} (w1), {hostname} (host), {pid} (old pid), {queues} (a,b). Examples: "
            "'systemctl start celery@{name}', 'kubectl delete pod {hostname}', 'docker restart {hostname}'.",
        ),
    ] = None,
    supervisor: Annotated[
        str | None,
        typer.Option(
            "--supervisor",
            metavar="URL",
            help="supervisord XML-RPC: http://user:pass@host:9001 or unix:///run/supervisor.sock. The "
            "program is the one whose pid is the worker's, or --program.",
        ),
    ] = None,
    program: Annotated[
        list[str] | None,
        typer.Option(
            "--program", metavar="NODE=PROGRAM", help="supervisord program of a worker (repeatable)."
        ),
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option(
            "--manifest",
            metavar="FILE",
            help="A worker is back only when its registered task names equal this manifest's tasks.",
        ),
    ] = None,
    expect_build: ExpectBuildOpt = None,
    drain_timeout: Annotated[
        str, typer.Option("--drain-timeout", metavar="DURATION", help="Per batch ('0' = no limit).")
    ] = "10m",
    shutdown_timeout: Annotated[str, typer.Option("--shutdown-timeout", metavar="DURATION")] = "2m",
    start_timeout: Annotated[
        str, typer.Option("--start-timeout", metavar="DURATION", help="Until a started worker answers.")
    ] = "2m",
    settle: Annotated[
        str | None,
        typer.Option(
            "--settle",
            metavar="DURATION",
            help="Pause between the confirmed shutdown and the start (default 2s with --exec, 0 with "
            "--supervisor, which watches the process itself).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    record_ttl: RecordTtlOpt = "7d",
    quiet: QuietOpt = False,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Rolling restart, batch by batch: drain → warm shutdown → start → wait until back → next.

    A failed batch stops the rollout; the workers of later batches are untouched.

    Exit codes: 0 restarted (or plan printed), 1 a start failed or a worker came back with other
    tasks than --manifest or another build than --expect-build, 2 usage (a --build no live worker
    runs), 3 a step timed out, 4 --min-consumers forbids a batch (nothing
    changed), 69 no selected worker answers, 130 interrupted.
    """
    from deploykit.orchestrate.adapters import ExecStarter, Starter, SupervisorStarter, parse_programs
    from deploykit.orchestrate.common import Timing, validate_builds
    from deploykit.orchestrate.restart import RestartMachine, RestartOptions, manifest_task_names
    from deploykit.output.documents import restart_document
    from deploykit.output.orchestrate import render_restart
    from deploykit.registry import validate_build

    with handle_errors():
        if (exec_ is None) == (supervisor is None):
            raise UsageError("restart needs exactly one of --exec 'COMMAND' or --supervisor URL")
        starter: Starter
        if exec_ is not None:
            starter = ExecStarter(exec_, timeout=parse_duration(start_timeout, what="--start-timeout"))
        else:
            assert supervisor is not None
            starter = SupervisorStarter(supervisor, parse_programs(program or []))
        expected = manifest_task_names(manifest) if manifest else None
        options = RestartOptions(
            workers=tuple(worker or ()),
            builds=validate_builds(build_ids or ()),
            expected_build=validate_build(expect_build, what="--expect-build build id")
            if expect_build is not None
            else None,
            batch=batch,
            min_consumers=min_consumers,
            drain_timeout=_duration(drain_timeout, "--drain-timeout"),
            shutdown_timeout=_duration(shutdown_timeout, "--shutdown-timeout"),
            start_timeout=parse_duration(start_timeout, what="--start-timeout"),
            expected_tasks=expected,
            dry_run=dry_run,
            settle=parse_duration(settle, what="--settle") if settle else (2.0 if exec_ else 0.0),
        )
        flags = merged_flags(ctx, app_, broker, management_url, None)
        with open_session(flags) as session:
            records = _records(session, record_ttl)
            display = _progress(quiet)

            def build() -> RestartMachine:
                return RestartMachine(
                    session.workers,
                    session.broker,
                    records,
                    starter,
                    replace(options, control_exchange=session.control_exchange),
                    timing=Timing(),
                    progress=display,
                )

            result = _run_machine(build, display, records)
        broker_url = session.settings.masked_broker_url
        _report(
            result,
            json_=json_,
            document=lambda: restart_document(result, broker=broker_url),
            text=lambda: render_restart(result, say),
        )


# -- deploy -----------------------------------------------------------------------------------
@app.command()
def deploy(
    ctx: typer.Context,
    run: Annotated[
        str,
        typer.Option(
            "--run",
            metavar="'COMMAND'",
            help="The deploy command, run once the old workers are stopped (split like a shell line, "
            "run without a shell: write `sh -c '…'` for one).",
        ),
    ],
    worker: WorkerOpt = None,
    build_ids: BuildOpt = None,
    expect_workers: Annotated[
        int | None,
        typer.Option("--expect-workers", metavar="N", min=1, help="Workers that must answer afterwards."),
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option("--manifest", metavar="FILE", help="New workers must register exactly these tasks."),
    ] = None,
    expect_build: ExpectBuildOpt = None,
    wait_eta: Annotated[
        bool, typer.Option("--wait-eta", help="Drain also waits for ETA tasks due in time.")
    ] = False,
    drain_timeout: Annotated[str, typer.Option("--drain-timeout", metavar="DURATION")] = "10m",
    shutdown_timeout: Annotated[str, typer.Option("--shutdown-timeout", metavar="DURATION")] = "2m",
    run_timeout: Annotated[str, typer.Option("--run-timeout", metavar="DURATION")] = "30m",
    settle: Annotated[
        str,
        typer.Option(
            "--settle",
            metavar="DURATION",
            help="Pause between the confirmed shutdown and the command (processes finish exiting).",
        ),
    ] = "2s",
    wait_timeout: Annotated[
        str, typer.Option("--wait-timeout", metavar="DURATION", help="Until the new workers answer.")
    ] = "5m",
    record_ttl: RecordTtlOpt = "7d",
    quiet: QuietOpt = False,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    json_: JsonOpt = False,
) -> None:
    """One-shot release: drain → warm shutdown → run the deploy command → wait for the new workers.

    The command runs once the workers stopped answering, their held messages are back in the
    broker and --settle has passed; prefer commands that wait for the old process themselves
    (`supervisorctl restart`, `systemctl restart`, `kubectl rollout restart`).

    Stop-the-world (for a rolling release use `restart`). Run `deploykit check` first to gate on
    signature changes.

    Exit codes: 0 deployed, 1 the command failed, new workers run other tasks than --manifest, or a
    stopped worker came back on another build than --expect-build (old workers are then stopped,
    their work back in the broker), 2 usage (a --build no live worker runs), 3 a step timed out,
    69 no selected worker answers, 130 interrupted.
    """
    from deploykit.orchestrate.common import Timing, validate_builds
    from deploykit.orchestrate.deploy import DeployMachine, DeployOptions, parse_command
    from deploykit.orchestrate.restart import manifest_task_names
    from deploykit.output.documents import deploy_document
    from deploykit.output.orchestrate import render_deploy
    from deploykit.registry import validate_build

    with handle_errors():
        command = parse_command(run)
        builds = validate_builds(build_ids or ())
        expected_build = (
            validate_build(expect_build, what="--expect-build build id") if expect_build is not None else None
        )
        expected = manifest_task_names(manifest) if manifest else None
        drain_s = _duration(drain_timeout, "--drain-timeout")
        shutdown_s = _duration(shutdown_timeout, "--shutdown-timeout")
        run_s = parse_duration(run_timeout, what="--run-timeout")
        wait_s = parse_duration(wait_timeout, what="--wait-timeout")
        flags = merged_flags(ctx, app_, broker, management_url, None)
        with open_session(flags) as session:
            records = _records(session, record_ttl)
            display = _progress(quiet)

            def build() -> DeployMachine:
                options = DeployOptions(
                    command=command,
                    workers=tuple(worker or ()),
                    builds=builds,
                    drain_timeout=drain_s,
                    shutdown_timeout=shutdown_s,
                    command_timeout=run_s,
                    wait_timeout=wait_s,
                    expect_workers=expect_workers,
                    expected_tasks=expected,
                    expected_build=expected_build,
                    wait_eta=wait_eta,
                    settle=parse_duration(settle, what="--settle"),
                    control_exchange=session.control_exchange,
                )
                return DeployMachine(
                    session.workers, session.broker, records, options, timing=Timing(), progress=display
                )

            result = _run_machine(build, display, records)
        broker_url = session.settings.masked_broker_url
        _report(
            result,
            json_=json_,
            document=lambda: deploy_document(result, broker=broker_url),
            text=lambda: render_deploy(result, say),
        )
