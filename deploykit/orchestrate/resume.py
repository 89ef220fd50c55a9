"""``resume``: put back exactly the consumers the record says deploykit cancelled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deploykit.brokers.base import Broker
from deploykit.brokers.records import RecordStore
from deploykit.errors import ExitCode
from deploykit.fleet.base import Fleet
from deploykit.orchestrate.common import Timing, matches, select_workers
from deploykit.orchestrate.drain import ConsumerRef, restore_consumers


@dataclass(frozen=True)
class ResumeResult:
    status: str  # "resumed" | "nothing-to-do" | "partial" | "unavailable"
    exit_code: int
    message: str
    restored: tuple[ConsumerRef, ...]
    #: Entries kept in the record: their worker did not answer, or the add was not confirmed.
    not_restored: tuple[ConsumerRef, ...]
    #: Entries dropped without re-adding (``forget_missing``: their worker is gone for good).
    forgotten: tuple[ConsumerRef, ...]
    record: str


def resume(
    fleet: Fleet,
    records: RecordStore,
    patterns: Sequence[str] = (),
    *,
    timing: Timing | None = None,
    forget_missing: bool = False,
    builds: Sequence[str] = (),
    broker: Broker | None = None,
    control_exchange: str = "celery",
) -> ResumeResult:
    """Re-add the recorded consumers of the workers matching ``patterns``, then clear those entries.

    A worker that does not answer keeps its entries (``resume`` can run again later), unless
    ``forget_missing``: a worker that was restarted or replaced consumes its queues anew anyway.
    With ``builds`` (needs ``broker``), only the entries of live workers advertising one of them:
    a worker that does not answer has no known build and is left alone.
    """
    timing = timing or Timing()
    entries = [r for r in records.load() if matches(r.worker, patterns)]
    if entries and builds:
        if broker is None:
            raise ValueError("resume(builds=...) needs the broker to find the workers")
        _, selected = select_workers(fleet, broker, patterns, control_exchange, builds)
        entries = [r for r in entries if r.worker in selected]
        if not entries:
            return ResumeResult(
                "nothing-to-do",
                int(ExitCode.OK),
                f"no recorded consumer of a live worker on build {', '.join(builds)}",
                (),
                (),
                (),
                records.location,
            )
    if not entries:
        return ResumeResult(
            "nothing-to-do", int(ExitCode.OK), "no recorded consumer to resume", (), (), (), records.location
        )
    workers = sorted({e.worker for e in entries})
    online = set(fleet.ping(workers))
    present = [e for e in entries if e.worker in online]
    absent = [e for e in entries if e.worker not in online]
    forgotten = []
    if forget_missing and absent:
        records.remove(absent)
        forgotten, absent = absent, []
    failed = restore_consumers(fleet, records, present, timing)
    restored = [e for e in present if e not in failed]
    kept = absent + failed

    def refs(items: Sequence[object]) -> tuple[ConsumerRef, ...]:
        return tuple(ConsumerRef(e.worker, e.queue) for e in items)  # type: ignore[attr-defined]

    if kept:
        who = ", ".join(sorted({e.worker for e in kept}))
        message = (
            f"re-added {len(restored)} consumer(s); {len(kept)} kept in the record because "
            f"{who} did not answer or confirm (run resume again, or --forget-missing)"
        )
        status, code = (
            ("partial", ExitCode.UNAVAILABLE) if restored else ("unavailable", ExitCode.UNAVAILABLE)
        )
    else:
        message = f"re-added {len(restored)} consumer(s)" + (
            f"; forgot {len(forgotten)} of workers that are gone" if forgotten else ""
        )
        status, code = "resumed", ExitCode.OK
    return ResumeResult(
        status, int(code), message, refs(restored), refs(kept), refs(forgotten), records.location
    )
