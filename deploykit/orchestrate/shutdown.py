"""``shutdown``: warm shutdown through remote control, then proof that held work went back.

::

    SELECT ──► SNAPSHOT ──► SEND ──► WAIT_GONE ──► VERIFY ──► DONE
      └► UNAVAILABLE                   └────────────┴──────► TIMEOUT

The ``shutdown`` control never replies: the worker raises ``WorkerShutdown`` before answering
(celery/worker/control.py, ``shutdown``; kombu/pidbox.py, ``Node.dispatch`` re-raises
``SystemExit`` before the reply). We confirm by the worker no longer answering ``ping``, then
check the broker: on Redis the reserved/prefetched/ETA messages it held leave the ``unacked`` hash
(kombu/transport/virtual/base.py, ``QoS.restore_unacked_once`` at warm shutdown). On RabbitMQ the
broker requeues a channel's unacknowledged deliveries the moment the channel closes
(https://www.rabbitmq.com/docs/confirms#automatic-requeueing), so the queues' ready count, read by
an AMQP passive declare (``message_count`` is ready messages, exact at that instant), rises by what
the worker held: that confirms the return at once. The management API's unacked statistics, which
refresh only every ``collect_statistics_interval`` (5 s; ~10 s in practice for a worker that held
only ETA messages), stay the second signal: they confirm the return when another worker took the
requeued messages before we looked (the ready count then never rises). Either signal is enough.
Active tasks finish first (warm shutdown). No cold shutdown, no kill: remote control cannot do
either, and a cold shutdown loses running ``acks_late=False`` tasks.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from deploykit.brokers.base import Broker, QueueReport
from deploykit.brokers.records import RecordStore
from deploykit.errors import DeploykitError, ExitCode
from deploykit.fleet.base import Fleet
from deploykit.fleet.replies import HELD_COMMANDS, consumed_queues, held_tasks, worker_pid
from deploykit.orchestrate.common import (
    Clockwork,
    Progress,
    ProgressCallback,
    Timing,
    listed_mailboxes,
    no_progress,
    select_workers,
    selection_text,
)

#: Consecutive missed pings before a worker counts as gone.
GONE_AFTER_MISSES = 2

#: How the return of the held messages was confirmed (``ShutdownResult.verified_by``).
BY_UNACKED_HASH = "unacked hash (Redis)"
BY_READY_COUNT = "queue message count (AMQP)"
BY_STATISTICS = "unacked statistics (management API)"


class ShutdownState(str, enum.Enum):
    SELECT = "select"
    SNAPSHOT = "snapshot"
    SEND = "send"
    WAIT_GONE = "wait-gone"
    VERIFY = "verify"
    DONE = "done"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    INTERRUPTED = "interrupted"


TERMINAL = {
    ShutdownState.DONE: ExitCode.OK,
    ShutdownState.TIMEOUT: ExitCode.TIMEOUT,
    ShutdownState.UNAVAILABLE: ExitCode.UNAVAILABLE,
    ShutdownState.INTERRUPTED: ExitCode.INTERRUPTED,
}


@dataclass(frozen=True)
class ShutdownOptions:
    workers: tuple[str, ...] = ()
    #: Only workers advertising one of these builds (and matching ``workers``); empty = any build.
    builds: tuple[str, ...] = ()
    timeout: float | None = 60.0
    control_exchange: str = "celery"
    #: Exact node names instead of patterns (used by ``restart``).
    exact: bool = False


@dataclass(frozen=True)
class WorkerShutdown:
    worker: str
    pid: int | None
    #: At the time of the shutdown: running (they finish), reserved/prefetched, ETA held.
    active: int
    reserved: int
    scheduled: int
    gone: bool
    gone_after: float | None


@dataclass(frozen=True)
class ShutdownResult:
    status: str
    exit_code: int
    message: str
    workers: tuple[WorkerShutdown, ...]
    #: Reserved + ETA messages the workers held, and how many are confirmed back in the broker.
    held: int
    returned: int | None
    #: ``True`` when the broker confirmed every held message is back; ``None``: cannot tell.
    verified: bool | None
    elapsed: float
    notes: tuple[str, ...] = ()
    #: Which broker signal confirmed the return (``BY_*`` above); ``None`` when unverified.
    verified_by: str | None = None


class ShutdownMachine:
    def __init__(
        self,
        fleet: Fleet,
        broker: Broker,
        options: ShutdownOptions,
        *,
        timing: Timing | None = None,
        progress: ProgressCallback = no_progress,
        records: RecordStore | None = None,
    ) -> None:
        self.fleet = fleet
        self.broker = broker
        self.options = options
        #: Entries of workers confirmed gone are dropped from it: nothing is left to undo on them.
        self.records = records
        self.forgotten = 0
        self.timing = timing or Timing()
        self.progress = progress
        self.state = ShutdownState.SELECT
        self.clock = Clockwork(self.timing, options.timeout)
        self.selected: list[str] = []
        self.info: dict[str, dict[str, int | None]] = {}
        self.queues: list[str] = []
        self.held_ids: set[str] = set()
        self.baseline_ids: set[str] = set()
        self.baseline_unacked: int | None = None
        self.baseline_ready: int | None = None
        self.misses: dict[str, int] = {}
        self.gone: dict[str, float] = {}
        self.returned: int | None = None
        self._mailbox_signal = False
        self.verified: bool | None = None
        self.verified_by: str | None = None
        self.message = ""
        self.notes: list[str] = []

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def run(self) -> ShutdownResult:
        try:
            while not self.done:
                self.step()
        except KeyboardInterrupt:
            self.message = "interrupted: a shutdown already sent cannot be taken back"
            self.state = ShutdownState.INTERRUPTED
        return self.result()

    def step(self) -> ShutdownState:
        handler = {
            ShutdownState.SELECT: self._select,
            ShutdownState.SNAPSHOT: self._snapshot,
            ShutdownState.SEND: self._send,
            ShutdownState.WAIT_GONE: self._wait_gone,
            ShutdownState.VERIFY: self._verify,
        }.get(self.state)
        if handler is not None:
            handler()
        return self.state

    def _select(self) -> None:
        if self.options.exact:
            self.selected = sorted(self.fleet.ping(list(self.options.workers)))
        else:
            _, self.selected = select_workers(
                self.fleet,
                self.broker,
                self.options.workers,
                self.options.control_exchange,
                self.options.builds,
            )
        if not self.selected:
            what = selection_text(self.options.workers, self.options.builds)
            self.message = f"no selected worker answers ({what})"
            self.state = ShutdownState.UNAVAILABLE
            return
        self.state = ShutdownState.SNAPSHOT

    def _snapshot(self) -> None:
        replies = self.fleet.gather({**HELD_COMMANDS, "stats": {}, "active_queues": {}}, self.selected)
        queues: set[str] = set()
        for node in self.selected:
            tasks = held_tasks(replies, node)
            self.info[node] = {
                "pid": worker_pid(replies.get("stats", node)),
                "active": sum(t.state == "active" for t in tasks),
                "reserved": sum(t.state == "reserved" for t in tasks),
                "scheduled": sum(t.state == "scheduled" for t in tasks),
            }
            self.held_ids.update(t.id for t in tasks if t.state != "active" and t.id)
            queues.update(consumed_queues(replies.get("active_queues", node)))
        self.queues = sorted(queues)
        listed = listed_mailboxes(self.broker, self.options.control_exchange)
        self._mailbox_signal = listed is not None and set(self.selected) <= listed
        if self.broker.kind == "redis":
            self.baseline_ids = self._unacked_ids()
        elif self.queues:
            report = self.broker.queue_stats(self.queues)
            self.baseline_unacked = _total(report, "unacked")
            self.baseline_ready = _total(report, "ready")
        self.state = ShutdownState.SEND

    def _unacked_ids(self) -> set[str]:
        ids = set()
        for message in self.broker.unacked_messages():
            task_id = message.headers.id
            if isinstance(task_id, str):
                ids.add(task_id)
        return ids

    def _send(self) -> None:
        self.fleet.control("shutdown", {}, self.selected, reply=False)
        self.state = ShutdownState.WAIT_GONE

    def _wait_gone(self) -> None:
        pending = [n for n in self.selected if n not in self.gone]
        mailboxes = (
            listed_mailboxes(self.broker, self.options.control_exchange) if self._mailbox_signal else None
        )
        if mailboxes is not None:
            for node in pending:
                if node not in mailboxes:  # its mailbox went away: the warm shutdown has begun
                    self.gone[node] = self.clock.elapsed
            pending = [n for n in pending if n not in self.gone]
        answered = set(self.fleet.ping(pending)) if pending else set()
        for node in pending:
            if node in answered:
                self.misses[node] = 0
            else:
                self.misses[node] = self.misses.get(node, 0) + 1
                if self.misses[node] >= GONE_AFTER_MISSES:
                    self.gone[node] = self.clock.elapsed
        left = len(self.selected) - len(self.gone)
        self.progress(
            Progress(
                "shutdown", left, self.clock.elapsed, len(self.selected), f"{left} worker(s) still answer"
            )
        )
        if not left:
            self.state = ShutdownState.VERIFY
            return
        self._timeout_or_sleep(f"{left} worker(s) still answer after the shutdown command")

    def _verify(self) -> None:
        held = len(self.held_ids)
        if self.broker.kind == "redis":
            watched = self.held_ids & self.baseline_ids
            still = watched & self._unacked_ids()
            self.returned = len(watched) - len(still)
            outstanding = len(still)
            confirmed_by = BY_UNACKED_HASH
            if len(watched) < held:
                self.notes.append(
                    f"{held - len(watched)} held task(s) were not in 'unacked' when the shutdown was sent"
                )
        else:
            counted = self._outstanding_by_counts(held)
            if counted is None:
                self.notes.append(
                    "the broker reports neither ready nor unacked counts: the return is unverified"
                )
                self.verified = None
                self._finish()
                return
            outstanding, confirmed_by = counted
            self.returned = held - min(outstanding, held)
        self.progress(
            Progress("verify", outstanding, self.clock.elapsed, held, "held message(s) not yet back")
        )
        if outstanding == 0:
            self.verified = True
            self.verified_by = confirmed_by
            self._finish()
            return
        self._timeout_or_sleep(f"{outstanding} held message(s) not yet back in the broker")

    def _outstanding_by_counts(self, held: int) -> tuple[int, str] | None:
        """Held messages not yet back, by the better of two counts (RabbitMQ and other brokers).

        The ready count is exact at once: every requeued message is ready until a consumer takes
        it. The unacked statistics lag, but also see messages another worker already took again.
        """
        if not self.queues:
            return 0, BY_READY_COUNT
        report = self.broker.queue_stats(self.queues)
        candidates: list[tuple[int, str]] = []
        ready = _total(report, "ready")
        if ready is not None and self.baseline_ready is not None:
            candidates.append((max(held - (ready - self.baseline_ready), 0), BY_READY_COUNT))
        unacked = _total(report, "unacked")
        if unacked is not None and (self.baseline_unacked is not None or not held):
            target = max((self.baseline_unacked or 0) - held, 0)
            candidates.append((max(unacked - target, 0), BY_STATISTICS))
        return min(candidates, key=lambda c: c[0]) if candidates else None

    def _finish(self) -> None:
        if self.records is not None:
            try:
                stale = [r for r in self.records.load() if r.worker in self.gone]
                if stale:
                    self.records.remove(stale)
                    self.forgotten = len(stale)
                    self.notes.append(f"dropped {len(stale)} record entr(y/ies) of the stopped worker(s)")
            except DeploykitError as exc:  # housekeeping only: the shutdown itself succeeded
                self.notes.append(f"could not tidy the deploykit record: {exc.message}")
        names = ", ".join(self.selected)
        back = f"; {self.returned} held message(s) back in the broker" if self.returned is not None else ""
        self.message = f"{names} shut down warmly in {self.clock.elapsed:.1f}s{back}"
        self.state = ShutdownState.DONE

    def _timeout_or_sleep(self, what: str) -> None:
        if self.clock.expired:
            self.message = f"timed out after {self.clock.elapsed:.1f}s: {what}"
            self.state = ShutdownState.TIMEOUT
            return
        left = self.clock.left
        self.timing.sleep(self.timing.tick if left is None else max(0.0, min(self.timing.tick, left)))

    def result(self) -> ShutdownResult:
        state = self.state if self.state in TERMINAL else ShutdownState.TIMEOUT
        workers = tuple(
            WorkerShutdown(
                worker=node,
                pid=self.info.get(node, {}).get("pid"),
                active=self.info.get(node, {}).get("active") or 0,
                reserved=self.info.get(node, {}).get("reserved") or 0,
                scheduled=self.info.get(node, {}).get("scheduled") or 0,
                gone=node in self.gone,
                gone_after=round(self.gone[node], 3) if node in self.gone else None,
            )
            for node in self.selected
        )
        return ShutdownResult(
            status=state.value,
            exit_code=int(TERMINAL[state]),
            message=self.message,
            workers=workers,
            held=len(self.held_ids),
            returned=self.returned,
            verified=self.verified,
            elapsed=round(self.clock.elapsed, 3),
            notes=tuple(self.notes),
            verified_by=self.verified_by,
        )


def _total(report: QueueReport, count: str) -> int | None:
    """One count (``ready`` or ``unacked``) summed over the report's queues; ``None``: one is unknown."""
    values: list[int | None] = [getattr(q, count) for q in report.queues if q.exists]
    known = [v for v in values if v is not None]
    return sum(known) if len(known) == len(values) else None


def exact_patterns(nodes: Sequence[str]) -> tuple[str, ...]:
    """Glob patterns that match exactly these node names."""
    import glob

    return tuple(glob.escape(n) for n in nodes)
