"""``restart``: a rolling restart, batch by batch, that never half-restarts silently.

::

    PLAN ──► (dry run: PLANNED)
      │
      └─► for each batch:  DRAIN ──► SHUTDOWN ──► START ──► WAIT_BACK ──┐
                             │          │           │          │        │ next batch
                             ▼          ▼           ▼          ▼        ▼
                         (drain's   TIMEOUT     FAILED     TIMEOUT /   DONE
                          outcome;                         FAILED (wrong tasks)
                          consumers re-added)

A failed batch stops the rollout; later batches are untouched. ``--min-consumers`` is checked for
every batch before anything changes (like a PodDisruptionBudget), and again by each batch's drain.
A worker counts as back when its node name answers ``ping`` again and, with a manifest, its
``registered`` task names equal the manifest's; with an expected build, when it advertises that
build (a worker that comes back on another build, or on none, fails the batch).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from deploykit.brokers.base import Broker
from deploykit.brokers.records import RecordStore
from deploykit.errors import DeploykitError, ExitCode, UsageError
from deploykit.fleet.base import Fleet
from deploykit.fleet.replies import consumed_queues, registered_names, worker_build, worker_pid
from deploykit.orchestrate.adapters import Starter, WorkerRef
from deploykit.orchestrate.common import (
    Clockwork,
    Progress,
    ProgressCallback,
    Timing,
    build_mismatch,
    listed_mailboxes,
    no_progress,
    select_workers,
    selection_text,
)
from deploykit.orchestrate.drain import DrainMachine, DrainOptions
from deploykit.orchestrate.shutdown import ShutdownMachine, ShutdownOptions, exact_patterns


class RestartState(str, enum.Enum):
    PLAN = "plan"
    DRAIN = "drain"
    SHUTDOWN = "shutdown"
    START = "start"
    WAIT_BACK = "wait-back"
    DONE = "done"
    PLANNED = "planned"
    FAILED = "failed"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    UNAVAILABLE = "unavailable"
    INTERRUPTED = "interrupted"


TERMINAL = {
    RestartState.DONE: ExitCode.OK,
    RestartState.PLANNED: ExitCode.OK,
    RestartState.FAILED: ExitCode.UNSAFE,
    RestartState.TIMEOUT: ExitCode.TIMEOUT,
    RestartState.REFUSED: ExitCode.REFUSED,
    RestartState.UNAVAILABLE: ExitCode.UNAVAILABLE,
    RestartState.INTERRUPTED: ExitCode.INTERRUPTED,
}

_DRAIN_OUTCOME = {
    "timeout": RestartState.TIMEOUT,
    "refused": RestartState.REFUSED,
    "unavailable": RestartState.UNAVAILABLE,
    "failed": RestartState.FAILED,
    "interrupted": RestartState.INTERRUPTED,
}


@dataclass(frozen=True)
class RestartOptions:
    workers: tuple[str, ...] = ()
    #: Only workers advertising one of these builds (and matching ``workers``); empty = any build.
    builds: tuple[str, ...] = ()
    batch: int = 1
    min_consumers: int | None = None
    drain_timeout: float | None = 600.0
    shutdown_timeout: float | None = 120.0
    start_timeout: float = 120.0
    #: Task names the restarted workers must register (from ``--manifest``).
    expected_tasks: frozenset[str] | None = None
    #: The build the restarted workers must advertise (``--expect-build``).
    expected_build: str | None = None
    dry_run: bool = False
    #: Seconds between the confirmed warm shutdown and the start (the process finishes exiting
    #: after its mailbox closed); the supervisord adapter watches the process itself and needs none.
    settle: float = 0.0
    control_exchange: str = "celery"


@dataclass
class WorkerRestart:
    worker: str
    target: str
    old_pid: int | None
    new_pid: int | None = None
    back_after: float | None = None


@dataclass
class BatchReport:
    index: int
    workers: list[str]
    status: str = "pending"
    drained_in: float | None = None
    shutdown_in: float | None = None
    held: int | None = None
    returned: int | None = None
    restarts: list[WorkerRestart] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class RestartResult:
    status: str
    exit_code: int
    message: str
    starter: str
    batches: tuple[BatchReport, ...]
    restarted: tuple[str, ...]
    untouched: tuple[str, ...]
    elapsed: float
    dry_run: bool


class RestartMachine:
    def __init__(
        self,
        fleet: Fleet,
        broker: Broker,
        records: RecordStore,
        starter: Starter,
        options: RestartOptions,
        *,
        timing: Timing | None = None,
        progress: ProgressCallback = no_progress,
    ) -> None:
        self.fleet = fleet
        self.broker = broker
        self.records = records
        self.starter = starter
        self.options = options
        self.timing = timing or Timing()
        self.progress = progress
        self.state = RestartState.PLAN
        self.clock = Clockwork(self.timing, None)
        self.batches: list[BatchReport] = []
        self.refs: dict[str, WorkerRef] = {}
        self.current = 0
        self.message = ""
        self._drain: DrainMachine | None = None
        self._step_started = 0.0

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def run(self) -> RestartResult:
        try:
            while not self.done:
                self.step()
        except KeyboardInterrupt:
            self._interrupt()
        return self.result()

    def step(self) -> RestartState:
        handler = {
            RestartState.PLAN: self._plan,
            RestartState.DRAIN: self._drain_batch,
            RestartState.SHUTDOWN: self._shutdown_batch,
            RestartState.START: self._start_batch,
            RestartState.WAIT_BACK: self._wait_back,
        }.get(self.state)
        if handler is not None:
            try:
                handler()
            except UsageError:  # a wrong argument (a --build nobody runs): exit 2, nothing changed
                raise
            except DeploykitError as exc:
                self._fail(RestartState(_state_for(exc)), exc.message)
        return self.state

    @property
    def batch(self) -> BatchReport:
        return self.batches[self.current]

    def _fail(self, state: RestartState, message: str) -> None:
        if self.batches and self.current < len(self.batches):
            self.batch.status = state.value
            self.batch.error = message
            self.message = (
                f"batch {self.current + 1}/{len(self.batches)} ({', '.join(self.batch.workers)}): {message}"
            )
            if self.current + 1 < len(self.batches):
                self.message += "; the rollout stopped, later batches are untouched"
        else:
            self.message = message
        self.state = state

    def _interrupt(self) -> None:
        where = self.state.value
        if self._drain is not None and not self._drain.done:
            self._drain.interrupt()
        self._fail(RestartState.INTERRUPTED, f"interrupted during {where}")

    # -- states -----------------------------------------------------------------------------
    def _plan(self) -> None:
        online, selected = select_workers(
            self.fleet,
            self.broker,
            self.options.workers,
            self.options.control_exchange,
            self.options.builds,
        )
        if not selected:
            what = selection_text(self.options.workers, self.options.builds)
            self.message = f"no selected worker answers ({what})"
            self.state = RestartState.UNAVAILABLE
            return
        replies = self.fleet.gather({"stats": {}, "active_queues": {}}, online)
        consumers: dict[str, set[str]] = {}
        for node in online:
            queues = replies.get("active_queues", node)
            if queues is not None:
                consumers[node] = set(consumed_queues(queues))
        missing = [n for n in selected if n not in consumers]
        if missing:
            self.message = f"worker(s) {', '.join(missing)} did not answer; nothing was changed"
            self.state = RestartState.UNAVAILABLE
            return
        for node in selected:
            pid = worker_pid(replies.get("stats", node))
            self.refs[node] = WorkerRef(node, pid, tuple(sorted(consumers[node])))
        size = max(1, self.options.batch)
        groups = [selected[i : i + size] for i in range(0, len(selected), size)]
        self.batches = [BatchReport(i, group) for i, group in enumerate(groups)]
        minimum = self.options.min_consumers
        if minimum:
            for batch in self.batches:
                for queue in sorted({q for n in batch.workers for q in consumers[n]}):
                    have = sum(1 for qs in consumers.values() if queue in qs)
                    losing = sum(1 for n in batch.workers if queue in consumers[n])
                    if have - losing < minimum:
                        self.message = (
                            f"batch {batch.index + 1} ({', '.join(batch.workers)}) would "
                            f"leave queue {queue} with {have - losing} consumer(s) "
                            f"(< --min-consumers {minimum}); use a smaller --batch; nothing was changed"
                        )
                        self.state = RestartState.REFUSED
                        return
        for batch in self.batches:  # resolve every target now: a bad mapping fails before any change
            batch.restarts = [
                WorkerRestart(n, self.starter.target(self.refs[n]), self.refs[n].pid) for n in batch.workers
            ]
        if self.options.dry_run:
            self.message = (
                f"plan: {len(selected)} worker(s) in {len(self.batches)} batch(es); nothing was changed"
            )
            self.state = RestartState.PLANNED
            return
        self._begin_batch()

    def _begin_batch(self) -> None:
        self.batch.status = "draining"
        self._drain = DrainMachine(
            self.fleet,
            self.broker,
            self.records,
            DrainOptions(
                workers=exact_patterns(self.batch.workers),
                timeout=self.options.drain_timeout,
                min_consumers=self.options.min_consumers,
                rollback_on_timeout=True,
                control_exchange=self.options.control_exchange,
            ),
            timing=self.timing,
            progress=self.progress,
        )
        self._step_started = self.timing.clock()
        self.state = RestartState.DRAIN

    def _drain_batch(self) -> None:
        assert self._drain is not None
        self._drain.step()
        if not self._drain.done:
            return
        outcome = self._drain.result()
        self.batch.drained_in = outcome.elapsed
        if outcome.status != "drained":
            self._fail(
                _DRAIN_OUTCOME.get(outcome.status, RestartState.FAILED),
                f"drain {outcome.status}: {outcome.message}",
            )
            return
        self.batch.status = "shutting-down"
        self.state = RestartState.SHUTDOWN

    def _shutdown_batch(self) -> None:
        machine = ShutdownMachine(
            self.fleet,
            self.broker,
            ShutdownOptions(
                workers=tuple(self.batch.workers),
                timeout=self.options.shutdown_timeout,
                control_exchange=self.options.control_exchange,
                exact=True,
            ),
            timing=self.timing,
            progress=self.progress,
            records=self.records,
        )
        outcome = machine.run()
        self.batch.shutdown_in = outcome.elapsed
        self.batch.held = outcome.held
        self.batch.returned = outcome.returned
        if outcome.status == "interrupted":
            raise KeyboardInterrupt
        if outcome.status != "done":
            state = RestartState.TIMEOUT if outcome.status == "timeout" else RestartState.UNAVAILABLE
            self._fail(state, f"warm shutdown {outcome.status}: {outcome.message}")
            return
        self.batch.status = "starting"
        if self.options.settle > 0:
            self.timing.sleep(self.options.settle)
        self.state = RestartState.START

    def _start_batch(self) -> None:
        for restart in self.batch.restarts:
            self.starter.start(self.refs[restart.worker])
        self._step_started = self.timing.clock()
        self.batch.status = "waiting"
        self.state = RestartState.WAIT_BACK

    def _wait_back(self) -> None:
        pending = [r for r in self.batch.restarts if r.back_after is None]
        candidates = [r.worker for r in pending]
        mailboxes = listed_mailboxes(self.broker, self.options.control_exchange)
        if mailboxes is not None:  # ping only workers whose mailbox is up: a missed ping costs a timeout
            candidates = [n for n in candidates if n in mailboxes]
        answered = set(self.fleet.ping(candidates)) if candidates else set()
        elapsed = self.timing.clock() - self._step_started
        if answered:
            commands: dict[str, dict[str, Any]] = {"stats": {}}
            if self.options.expected_tasks is not None:
                commands["registered"] = {}
            replies = self.fleet.gather(commands, sorted(answered))
            for restart in pending:
                if restart.worker not in answered or restart.worker in replies.missing:
                    continue
                stats = replies.get("stats", restart.worker)
                restart.new_pid = worker_pid(stats)
                if self.options.expected_build is not None:
                    wrong = build_mismatch(worker_build(stats), self.options.expected_build)
                    if wrong:
                        self._fail(
                            RestartState.FAILED,
                            f"{restart.worker} came back on the wrong build: {wrong}; "
                            "it is not counted as back",
                        )
                        return
                if self.options.expected_tasks is not None:
                    problem = task_mismatch(
                        replies.get("registered", restart.worker), self.options.expected_tasks
                    )
                    if problem:
                        self._fail(
                            RestartState.FAILED, f"{restart.worker} came back running other code: {problem}"
                        )
                        return
                restart.back_after = round(elapsed, 3)
        pending = [r for r in self.batch.restarts if r.back_after is None]
        self.progress(
            Progress("start", len(pending), elapsed, len(self.batch.restarts), "worker(s) not back yet")
        )
        if not pending:
            # The new processes consume their configured queues: the drain's record is spent.
            if self._drain is not None:
                try:
                    self.records.remove(self._drain.cancelled)
                except DeploykitError:  # housekeeping only; `resume --forget-missing` tidies up
                    pass
            self.batch.status = "restarted"
            self.current += 1
            if self.current < len(self.batches):
                self._begin_batch()
            else:
                count = sum(len(b.workers) for b in self.batches)
                self.message = (
                    f"restarted {count} worker(s) in {len(self.batches)} batch(es) "
                    f"in {self.clock.elapsed:.1f}s"
                )
                self.state = RestartState.DONE
            return
        if elapsed >= self.options.start_timeout:
            names = ", ".join(r.worker for r in pending)
            self._fail(RestartState.TIMEOUT, f"{names} not back within {self.options.start_timeout:g}s")
            return
        self.timing.sleep(self.timing.tick)

    def result(self) -> RestartResult:
        state = self.state if self.state in TERMINAL else RestartState.FAILED
        restarted = tuple(n for b in self.batches if b.status == "restarted" for n in b.workers)
        untouched = tuple(n for b in self.batches if b.status == "pending" for n in b.workers)
        return RestartResult(
            status=state.value,
            exit_code=int(TERMINAL[state]),
            message=self.message,
            starter=self.starter.kind,
            batches=tuple(self.batches),
            restarted=restarted,
            untouched=untouched,
            elapsed=round(self.clock.elapsed, 3),
            dry_run=self.options.dry_run,
        )


def _state_for(exc: DeploykitError) -> str:
    return {
        ExitCode.TIMEOUT: "timeout",
        ExitCode.REFUSED: "refused",
        ExitCode.UNAVAILABLE: "unavailable",
        ExitCode.INTERRUPTED: "interrupted",
    }.get(exc.exit_code, "failed")


def task_mismatch(registered: Any, expected: frozenset[str]) -> str | None:
    """Why a `registered` reply does not match the expected task names, or ``None`` when it does."""
    names = registered_names(registered)
    if names is None:
        return "no answer to 'registered'"
    wanted = {n for n in expected if not n.startswith("celery.")}
    missing, extra = sorted(wanted - names), sorted(names - wanted)
    if not missing and not extra:
        return None
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:5])}" + (" …" if len(missing) > 5 else ""))
    if extra:
        parts.append(f"unexpected {', '.join(extra[:5])}" + (" …" if len(extra) > 5 else ""))
    return "; ".join(parts)


def manifest_task_names(path: Any) -> frozenset[str]:
    """Task names in a manifest file (a corrupt or unreadable file is a usage error)."""
    from deploykit.manifest import model

    return frozenset(model.read(path).tasks)


__all__: Sequence[str] = (
    "RestartMachine",
    "RestartOptions",
    "RestartResult",
    "RestartState",
    "manifest_task_names",
)
