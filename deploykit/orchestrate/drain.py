"""``drain``: stop intake on selected workers/queues, then wait until they hold no work.

Modelled on ``kubectl drain`` (cordon → evict with a budget → wait,
https://kubernetes.io/docs/reference/kubectl/generated/kubectl_drain) and Sidekiq's quiet
(https://github.com/sidekiq/sidekiq/wiki/Signals)::

    SELECT ──► BUDGET ──► CANCEL ──► CONFIRM ──► WAIT ──► DRAINED
      │          │                      │          ├────► TIMEOUT (workers stay quiet, or rollback)
      │          └► REFUSED (nothing    └► FAILED  └────► FAILED (a worker vanished while it held work)
      │             changed)               (rolled back)
      ├──► UNAVAILABLE (no selected worker answers)
      └──► WAIT_EMPTY ──► DRAINED / TIMEOUT            (``until_empty``: no cancel at all)

    any state ──(KeyboardInterrupt)──► INTERRUPTED (every consumer this drain cancelled is re-added)

Every consumer is written to the record *before* ``cancel_consumer`` is sent, so a crash between
the two leaves a record ``resume`` can act on (re-adding a consumer that is still there is a no-op).
``cancel_consumer`` leaves reserved/prefetched messages in the worker, which still runs them
(celery/worker/consumer/consumer.py, Consumer.cancel_task_queue only stops the queue's consumer):
that is why the wait counts ``active`` *and* ``reserved``.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deploykit.brokers.base import Broker
from deploykit.brokers.records import ConsumerRecord, RecordStore
from deploykit.errors import ExitCode, Unavailable
from deploykit.fleet.base import Fleet
from deploykit.fleet.replies import HELD_COMMANDS, HeldTask, consumed_queues, held_tasks
from deploykit.orchestrate.common import (
    Clockwork,
    Progress,
    ProgressCallback,
    Timing,
    add_consumer_arguments,
    no_progress,
    select_workers,
    selection_text,
)

#: How long to wait for ``active_queues`` to show a cancel/add took effect (they run ``call_soon``).
CONFIRM_WINDOW = 5.0
#: How long a drain keeps waiting through a broker outage before it gives up.
BROKER_GRACE = 60.0
#: Consecutive ticks a worker may miss before we ping it to see whether it is gone.
MISSES_BEFORE_PING = 3


#: ``(queues, workers) -> number of waiting messages the new release would not run``.
IncompatibleCounter = Callable[[Sequence[str], Sequence[str]], int]


class DrainState(str, enum.Enum):
    SELECT = "select"
    BUDGET = "budget"
    CANCEL = "cancel"
    CONFIRM = "confirm"
    WAIT = "wait"
    WAIT_EMPTY = "wait-empty"
    # terminal
    DRAINED = "drained"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


TERMINAL = {
    DrainState.DRAINED: ExitCode.OK,
    DrainState.TIMEOUT: ExitCode.TIMEOUT,
    DrainState.REFUSED: ExitCode.REFUSED,
    DrainState.UNAVAILABLE: ExitCode.UNAVAILABLE,
    DrainState.FAILED: ExitCode.UNSAFE,
    DrainState.INTERRUPTED: ExitCode.INTERRUPTED,
}


@dataclass(frozen=True)
class DrainOptions:
    """What to drain and how."""

    #: Glob patterns of worker node names (``w1@*``, ``*@host``, ``w1``); empty = every worker.
    workers: tuple[str, ...] = ()
    #: Only workers advertising one of these builds (and matching ``workers``); empty = any build.
    builds: tuple[str, ...] = ()
    #: Queues to stop consuming; empty = every queue the selected workers consume.
    queues: tuple[str, ...] = ()
    #: Seconds; ``None`` waits forever.
    timeout: float | None = None
    #: Refuse when a queue would be left with fewer consumers than this.
    min_consumers: int | None = None
    #: Also wait for held ETA tasks due before the deadline.
    wait_eta: bool = False
    #: Do not cancel anything: wait until the queues are empty (ready + unacked + held).
    until_empty: bool = False
    #: On timeout, put the cancelled consumers back instead of leaving the workers quiet.
    rollback_on_timeout: bool = False
    control_exchange: str = "celery"


@dataclass(frozen=True)
class ConsumerRef:
    worker: str
    queue: str


@dataclass(frozen=True)
class Remaining:
    """What is left at the end (``None``: not measured in this mode)."""

    active: int = 0
    reserved: int = 0
    #: Held ETA tasks the drain waits for (``wait_eta``).
    eta_waited: int = 0
    #: ``until_empty``: messages waiting / unacknowledged in the broker.
    ready: int | None = None
    unacked: int | None = None
    #: ``until_empty`` with ``incompatible_with``: messages the new release would not run.
    incompatible: int | None = None

    @property
    def total(self) -> int:
        if self.incompatible is not None:
            return self.incompatible
        return self.active + self.reserved + self.eta_waited + (self.ready or 0) + (self.unacked or 0)


@dataclass(frozen=True)
class EtaTask:
    id: str | None
    name: str | None
    worker: str
    queue: str | None
    eta: datetime | None


@dataclass(frozen=True)
class DrainResult:
    """The outcome of one drain, rendered as text or JSON by the CLI."""

    status: str
    exit_code: int
    message: str
    mode: str
    drain_id: str
    workers: tuple[str, ...]
    queues: tuple[str, ...]
    cancelled: tuple[ConsumerRef, ...]
    rolled_back: bool
    elapsed: float
    remaining: Remaining
    held_eta: tuple[EtaTask, ...]
    #: What happens to the held ETA tasks, for this broker.
    eta_fate: str
    lost_workers: tuple[str, ...] = ()
    unresponsive: tuple[str, ...] = ()
    #: Consumers that could not be put back (still in the record: run ``deploykit resume``).
    not_restored: tuple[ConsumerRef, ...] = ()
    notes: tuple[str, ...] = ()


def eta_fate(broker_kind: str, visibility_timeout: float | None = None) -> str:
    """What happens to ETA tasks a drained worker holds, per broker.

    Redis: kombu/transport/virtual/base.py, QoS.restore_unacked_once; RabbitMQ:
    https://www.rabbitmq.com/docs/confirms#automatic-requeueing.
    """
    if broker_kind == "redis":
        vt = f"{visibility_timeout:g} s" if visibility_timeout else "visibility_timeout (1 h by default)"
        return (
            "Redis: they stay unacknowledged in the broker's 'unacked' hash; a warm shutdown "
            "(deploykit shutdown, SIGTERM) restores them to their queue at once (restore_unacked_once). "
            f"A killed worker leaves them there until {vt} has passed. Until shutdown, the drained "
            "worker still runs them when they are due."
        )
    if broker_kind == "rabbitmq":
        return (
            "RabbitMQ: they are unacknowledged deliveries; RabbitMQ requeues them as soon as the "
            "worker's channel closes (warm shutdown, or even a kill). Until shutdown, the drained "
            "worker still runs them when they are due."
        )
    return "They go back to the broker when the worker shuts down warmly; until then it runs them when due."


class DrainMachine:
    """The drain state machine. ``step()`` advances one state; ``run()`` goes to the end."""

    def __init__(
        self,
        fleet: Fleet,
        broker: Broker,
        records: RecordStore,
        options: DrainOptions,
        *,
        timing: Timing | None = None,
        progress: ProgressCallback = no_progress,
        drain_id: str | None = None,
        incompatible: IncompatibleCounter | None = None,
    ) -> None:
        self.fleet = fleet
        self.broker = broker
        self.records = records
        self.options = options
        self.timing = timing or Timing()
        self.progress = progress
        self.drain_id = drain_id or uuid.uuid4().hex[:12]
        #: With ``until_empty``: counts the waiting messages the new release would not run.
        self.incompatible = incompatible
        self.state = DrainState.SELECT
        self.clock = Clockwork(self.timing, options.timeout)
        self.online: list[str] = []
        self.selected: list[str] = []
        self.unresponsive: list[str] = []
        #: {worker: {queue: spec}} for every online worker that answered.
        self.consumers: dict[str, dict[str, dict[str, Any]]] = {}
        self.plan: list[ConsumerRecord] = []
        #: Consumers a cancel was sent for (what a rollback must re-add).
        self.cancelled: list[ConsumerRecord] = []
        self.queues: list[str] = []
        self.lost: list[str] = []
        self.last_held: dict[str, list[HeldTask]] = {}
        self.remaining = Remaining()
        self.rolled_back = False
        self.not_restored: list[ConsumerRecord] = []
        self.message = ""
        self.notes: list[str] = []
        self._misses: dict[str, int] = {}
        self._confirm_started: float | None = None
        self._first_total: int | None = None
        self._outage_started: float | None = None

    # -- driving ----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def run(self) -> DrainResult:
        """Step to a terminal state. Ctrl-C/SIGTERM (as KeyboardInterrupt) rolls back, then returns."""
        try:
            while not self.done:
                self.step()
        except KeyboardInterrupt:
            self.interrupt()
        return self.result()

    def interrupt(self) -> None:
        """Put back every consumer this drain cancelled; end in INTERRUPTED."""
        self.rollback()
        restored = len(self.cancelled) - len(self.not_restored)
        self.message = f"interrupted: re-added {restored} consumer(s) this drain had cancelled"
        if self.not_restored:
            self.message += f"; {len(self.not_restored)} could not be re-added (kept in the record)"
        self.state = DrainState.INTERRUPTED

    def step(self) -> DrainState:
        handler = {
            DrainState.SELECT: self._select,
            DrainState.BUDGET: self._budget,
            DrainState.CANCEL: self._cancel,
            DrainState.CONFIRM: self._confirm,
            DrainState.WAIT: self._wait,
            DrainState.WAIT_EMPTY: self._wait_empty,
        }.get(self.state)
        if handler is None:
            return self.state
        try:
            handler()
            self._outage_started = None
        except Unavailable as exc:
            if self.state not in (DrainState.WAIT, DrainState.WAIT_EMPTY):
                raise
            self._ride_out(exc)
        return self.state

    def _ride_out(self, exc: Unavailable) -> None:
        """The broker went away while waiting (restart, failover): reconnect and keep waiting.

        Workers keep a cancelled queue deselected across reconnections (celery
        ``Consumer.cancel_task_queue`` deselects it in ``app.amqp.queues``), so nothing is lost
        by waiting; after ``BROKER_GRACE`` seconds without the broker we give up (exit 69).
        """
        now = self.timing.clock()
        if self._outage_started is None:
            self._outage_started = now
            self.notes.append(f"lost the broker while waiting: {exc.message}")
        self.fleet.close()
        if now - self._outage_started >= BROKER_GRACE or self.clock.expired:
            self.message = (
                f"broker unreachable for {now - self._outage_started:.0f}s while draining; the drained "
                "workers stay quiet (run `deploykit resume` once the broker is back)"
            )
            self.state = DrainState.UNAVAILABLE
            return
        self.timing.sleep(1.0)

    # -- states -----------------------------------------------------------------------------
    def _select(self) -> None:
        self.online, selected = select_workers(
            self.fleet,
            self.broker,
            self.options.workers,
            self.options.control_exchange,
            self.options.builds,
        )
        if not selected:
            what = selection_text(self.options.workers, self.options.builds)
            self.message = f"no selected worker answers ({what}; online: {', '.join(self.online) or 'none'})"
            self.state = DrainState.UNAVAILABLE
            return
        replies = self.fleet.gather({"active_queues": {}}, self.online)
        for node in self.online:
            reply = replies.get("active_queues", node)
            if reply is None:
                if node in selected:
                    self.unresponsive.append(node)
                continue
            self.consumers[node] = consumed_queues(reply)
        self.selected = [n for n in selected if n not in self.unresponsive]
        if not self.selected:
            self.message = f"no selected worker answers active_queues ({', '.join(selected)})"
            self.state = DrainState.UNAVAILABLE
            return
        wanted = set(self.options.queues)
        consumed = sorted({q for n in self.selected for q in self.consumers[n]})
        self.queues = sorted(wanted) if wanted else consumed
        for queue in sorted(wanted - set(consumed)):
            self.notes.append(f"no selected worker consumes queue {queue!r}")
        if self.options.until_empty:
            self.state = DrainState.WAIT_EMPTY
            return
        now = self.timing.now()
        self.plan = [
            ConsumerRecord(node, queue, spec, self.drain_id, now)
            for node in self.selected
            for queue, spec in sorted(self.consumers[node].items())
            if not wanted or queue in wanted
        ]
        self.state = DrainState.BUDGET

    def _budget(self) -> None:
        minimum = self.options.min_consumers
        if minimum:
            blocked = []
            for queue in sorted({r.queue for r in self.plan}):
                have = sum(1 for queues in self.consumers.values() if queue in queues)
                losing = sum(1 for r in self.plan if r.queue == queue)
                if have - losing < minimum:
                    blocked.append(f"{queue} ({have} → {have - losing})")
            if blocked:
                self.message = (
                    f"--min-consumers {minimum} would be violated for queue(s) "
                    f"{', '.join(blocked)}; nothing was changed"
                )
                self.state = DrainState.REFUSED
                return
        self.state = DrainState.CANCEL

    def _cancel(self) -> None:
        if not self.plan:
            self.state = DrainState.WAIT
            return
        # The record first: a crash after this line leaves something `resume` can undo.
        self.records.add(self.plan)
        self.cancelled = list(self.plan)
        for queue in sorted({r.queue for r in self.plan}):
            nodes = [r.worker for r in self.plan if r.queue == queue]
            self.fleet.control("cancel_consumer", {"queue": queue}, nodes)
        self._confirm_started = self.timing.clock()
        self.state = DrainState.CONFIRM

    def _unconfirmed(self, records: Sequence[ConsumerRecord], *, present: bool) -> list[ConsumerRecord]:
        """Records whose queue is (``present``) / is not still consumed, per ``active_queues``.
        A worker that does not answer counts as a miss (:meth:`_note_missing`) and stays pending."""
        nodes = sorted({r.worker for r in records if r.worker not in self.lost})
        replies = self.fleet.gather({"active_queues": {}}, nodes)
        for node in nodes:
            if replies.get("active_queues", node) is None:
                self._note_missing(node)
            else:
                self._misses[node] = 0
        left = []
        for record in records:
            reply = replies.get("active_queues", record.worker)
            if reply is None or (record.queue in consumed_queues(reply)) != present:
                left.append(record)
        return left

    def _confirm(self) -> None:
        # A worker that stopped answering (killed mid-drain) consumes nothing any more: it is
        # lost, which the wait reports, not a cancel that failed.
        pending = [r for r in self._unconfirmed(self.cancelled, present=False) if r.worker not in self.lost]
        if not pending:
            self.state = DrainState.WAIT
            return
        assert self._confirm_started is not None
        if self.timing.clock() - self._confirm_started < CONFIRM_WINDOW:
            self.timing.sleep(self.timing.tick)
            return
        names = ", ".join(f"{r.queue} on {r.worker}" for r in pending)
        self.rollback()
        self.message = (
            f"cancel_consumer not confirmed for {names}; every consumer this drain cancelled "
            "was re-added"
            + (f" except {len(self.not_restored)} (kept in the record)" if self.not_restored else "")
        )
        self.state = DrainState.FAILED

    def _held_now(self, nodes: Sequence[str]) -> dict[str, list[HeldTask] | None]:
        replies = self.fleet.gather(HELD_COMMANDS, list(nodes))
        held: dict[str, list[HeldTask] | None] = {}
        for node in nodes:
            if node in replies.missing:
                held[node] = None
            else:
                held[node] = held_tasks(replies, node)
        return held

    def _note_missing(self, node: str) -> None:
        self._misses[node] = self._misses.get(node, 0) + 1
        if self._misses[node] >= MISSES_BEFORE_PING and not self.fleet.ping([node]):
            self.lost.append(node)

    def _wait(self) -> None:
        nodes = [n for n in self.selected if n not in self.lost]
        held = self._held_now(nodes)
        deadline_left = self.clock.left
        active = reserved = eta_waited = 0
        for node, tasks in held.items():
            if tasks is None:
                self._note_missing(node)
                tasks = self.last_held.get(node, [])
            else:
                self._misses[node] = 0
                self.last_held[node] = tasks
            for task in tasks:
                if not self._from_drained_queue(task):
                    continue
                if task.state == "active":
                    active += 1
                elif task.state == "reserved":
                    reserved += 1
                elif self.options.wait_eta and self._due_in_time(task, deadline_left):
                    eta_waited += 1
        self.remaining = Remaining(active=active, reserved=reserved, eta_waited=eta_waited)
        self._report("drain")
        live = [n for n in self.selected if n not in self.lost]
        if self.lost and not live:
            self.message = f"worker(s) {', '.join(self.lost)} stopped answering while draining"
            self.state = DrainState.FAILED
            return
        if self.remaining.total == 0 and all(self._misses.get(n, 0) == 0 for n in live):
            if self.lost:
                self.message = (
                    f"drained, but worker(s) {', '.join(self.lost)} vanished while holding work: "
                    "see the tasks they last held"
                )
                self.state = DrainState.FAILED
            else:
                self.message = f"drained {len(self.selected)} worker(s) in {self.clock.elapsed:.1f}s"
                self.state = DrainState.DRAINED
            return
        self._timeout_or_sleep()

    def _wait_empty(self) -> None:
        if self.incompatible is not None:
            nodes = [n for n in self.consumers if n not in self.lost]
            count = self.incompatible(self.queues, nodes)
            self.remaining = Remaining(incompatible=count)
            self._report("until-compatible")
            if count == 0:
                self.message = (
                    f"no message the new release cannot run is left in {', '.join(self.queues)} "
                    f"after {self.clock.elapsed:.1f}s"
                )
                self.state = DrainState.DRAINED
                return
            self._timeout_or_sleep(minimum=1.0)  # a scan reads every message: not every 0.2 s
            return
        report = self.broker.queue_stats(self.queues)
        ready = sum(q.ready or 0 for q in report.queues)
        unacked = sum(q.unacked or 0 for q in report.queues)
        if any(q.ready is None or q.unacked is None for q in report.queues):
            note = "the broker does not report every count; unknown counts were taken as 0"
            if note not in self.notes:
                self.notes.append(note)
        wanted = set(self.queues)
        nodes = [n for n in self.consumers if n not in self.lost]
        held = self._held_now(nodes)
        active = reserved = eta = 0
        for node, tasks in held.items():
            if tasks is None:
                self._note_missing(node)
                continue
            self.last_held[node] = tasks
            for task in tasks:
                if task.queue in wanted:
                    if task.state == "active":
                        active += 1
                    elif task.state == "reserved":
                        reserved += 1
                    else:
                        eta += 1
        # On Redis `unacked` already includes the reserved/ETA tasks workers hold: count them once.
        unacked_extra = max(unacked - reserved - eta, 0) if self.broker.kind == "redis" else unacked
        self.remaining = Remaining(
            active=active, reserved=reserved, eta_waited=eta, ready=ready, unacked=unacked_extra
        )
        self._report("until-empty")
        if self.remaining.total == 0:
            self.message = f"queue(s) {', '.join(self.queues)} empty after {self.clock.elapsed:.1f}s"
            self.state = DrainState.DRAINED
            return
        self._timeout_or_sleep()

    def _timeout_or_sleep(self, minimum: float = 0.0) -> None:
        if self.clock.expired:
            self.message = (
                f"timed out after {self.clock.elapsed:.1f}s with {self.remaining.total} task(s) left"
            )
            if self.options.rollback_on_timeout and self.cancelled:
                self.rollback()
                self.message += "; consumers re-added (--rollback-on-timeout)"
            elif self.cancelled:
                self.message += "; the workers stay quiet (run `deploykit resume` to undo)"
            self.state = DrainState.TIMEOUT
            return
        left = self.clock.left
        tick = max(self.timing.tick, minimum)
        self.timing.sleep(tick if left is None else max(0.0, min(tick, left)))

    def _from_drained_queue(self, task: HeldTask) -> bool:
        """With ``--queue``, the worker keeps consuming its other queues: wait only for this work.

        A task's queue comes from its delivery info; once the consumer is cancelled the worker no
        longer declares the queue, so the routing key is matched too. Unknown counts (be safe).
        """
        if not self.options.queues or task.queue is None:
            return True
        if task.queue in self.options.queues:
            return True
        keys = {str(r.spec.get("routing_key")) for r in self.plan if r.spec.get("routing_key")}
        return task.queue in keys

    def _due_in_time(self, task: HeldTask, deadline_left: float | None) -> bool:
        if deadline_left is None or task.eta is None:
            return True
        due_in = (task.eta.timestamp()) - self.timing.now()
        return due_in <= deadline_left

    def _report(self, phase: str) -> None:
        total = self.remaining.total
        if self._first_total is None:
            self._first_total = total
        self.progress(
            Progress(
                phase=phase,
                remaining=total,
                elapsed=self.clock.elapsed,
                total=self._first_total,
                detail=f"active {self.remaining.active}, reserved {self.remaining.reserved}"
                + (f", eta {self.remaining.eta_waited}" if self.remaining.eta_waited else "")
                + (f", ready {self.remaining.ready}" if self.remaining.ready else ""),
            )
        )

    # -- undo -------------------------------------------------------------------------------
    def rollback(self) -> None:
        """Re-add every consumer this drain cancelled; drop them from the record once confirmed."""
        if not self.cancelled:
            return
        # An interrupt can land in the middle of a broker round trip: start from a fresh connection.
        self.fleet.close()
        try:
            self.not_restored = restore_consumers(self.fleet, self.records, self.cancelled, self.timing)
        except Exception as exc:  # the record keeps them: `deploykit resume` finishes the job
            self.not_restored = list(self.cancelled)
            self.notes.append(f"could not re-add the consumers: {exc}")
        self.rolled_back = True

    # -- result -----------------------------------------------------------------------------
    def result(self) -> DrainResult:
        held_eta = tuple(
            EtaTask(t.id, t.name, t.worker, t.queue, t.eta)
            for node in self.selected
            for t in self.last_held.get(node, [])
            if t.state == "scheduled"
        )
        visibility = None
        if self.broker.kind == "redis" and held_eta:
            try:
                visibility = self.broker.settings().visibility_timeout
            except Exception:  # a hint only; never fail a drain over it
                visibility = None
        state = self.state if self.state in TERMINAL else DrainState.FAILED
        return DrainResult(
            status=state.value,
            exit_code=int(TERMINAL[state]),
            message=self.message,
            mode=(
                ("until-compatible" if self.incompatible is not None else "until-empty")
                if self.options.until_empty
                else "cancel"
            ),
            drain_id=self.drain_id,
            workers=tuple(self.selected),
            queues=tuple(self.queues),
            cancelled=tuple(ConsumerRef(r.worker, r.queue) for r in self.cancelled),
            rolled_back=self.rolled_back,
            elapsed=round(self.clock.elapsed, 3),
            remaining=self.remaining,
            held_eta=held_eta,
            eta_fate=eta_fate(self.broker.kind, visibility),
            lost_workers=tuple(self.lost),
            unresponsive=tuple(self.unresponsive),
            not_restored=tuple(ConsumerRef(r.worker, r.queue) for r in self.not_restored),
            notes=tuple(self.notes),
        )


def restore_consumers(
    fleet: Fleet, records: RecordStore, entries: Sequence[ConsumerRecord], timing: Timing
) -> list[ConsumerRecord]:
    """``add_consumer`` for each entry, confirm with ``active_queues``, drop confirmed entries.

    Returns the entries that could not be confirmed (they stay in the record).
    """
    if not entries:
        return []
    by_worker: dict[str, list[ConsumerRecord]] = {}
    for entry in entries:
        by_worker.setdefault(entry.worker, []).append(entry)
    for worker, mine in sorted(by_worker.items()):
        for entry in mine:
            fleet.control("add_consumer", add_consumer_arguments(entry.queue, entry.spec), [worker])
    pending = list(entries)
    started = timing.clock()
    while True:
        replies = fleet.gather({"active_queues": {}}, sorted({e.worker for e in pending}))
        confirmed = [e for e in pending if e.queue in consumed_queues(replies.get("active_queues", e.worker))]
        if confirmed:
            records.remove(confirmed)
        pending = [e for e in pending if e not in confirmed]
        if not pending or timing.clock() - started >= CONFIRM_WINDOW:
            return pending
        timing.sleep(timing.tick)


__all__ = [
    "ConsumerRef",
    "DrainMachine",
    "DrainOptions",
    "DrainResult",
    "DrainState",
    "EtaTask",
    "Remaining",
    "eta_fate",
    "restore_consumers",
]
