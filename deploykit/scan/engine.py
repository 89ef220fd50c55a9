"""The compatibility scan: a verdict for every waiting message, aggregated in bounded memory.

Verdicts (per message, the worst of its calls — the task itself and every embedded callback,
chain or chord member):

* ``runs`` — every call binds to the new signature, to the same parameters as before;
* ``misbound`` — it binds, but positional arguments land on different parameters than under the
  old signature (needs the old manifest): it runs with swapped values, silently;
* ``fails`` — the new signature rejects it: the worker raises this ``TypeError`` and the task fails;
* ``discarded`` — the task name is no longer registered: the worker rejects it without requeue;
* ``undecidable`` — the message could not be decoded (pickle without usable reprs, corrupt body…).

Memory does not grow with the number of messages: per (task, verdict) group we keep counters, the
ETA range, three sample ids and the largest payloads.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, NamedTuple

from deploykit.messages import parse_time
from deploykit.scan.bind import CallChecker, TaskSpec
from deploykit.scan.decode import DecodedMessage, TaskCall, Undecodable


class Verdict(str, Enum):
    RUNS = "runs"
    MISBOUND = "misbound"
    FAILS = "fails"
    DISCARDED = "discarded"
    UNDECIDABLE = "undecidable"


#: Verdicts that stop a deploy (exit 1).
BREAKING = (Verdict.MISBOUND, Verdict.FAILS, Verdict.DISCARDED)
_SEVERITY = {
    Verdict.RUNS: 0,
    Verdict.UNDECIDABLE: 1,
    Verdict.DISCARDED: 2,
    Verdict.FAILS: 3,
    Verdict.MISBOUND: 4,
}
SAMPLES = 3
LARGEST = 3


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str | None = None


_RUNS = Outcome(Verdict.RUNS)


class Judge:
    """Classifies calls against the new (and optionally old) task signatures, with caching."""

    def __init__(self, new: Mapping[str, TaskSpec], old: Mapping[str, TaskSpec] | None = None) -> None:
        self._new = new
        self._old = old
        self._checkers: dict[tuple[str, str], CallChecker | None] = {}

    def _checker(self, which: str, name: str) -> CallChecker | None:
        key = (which, name)
        if key not in self._checkers:
            table = self._new if which == "new" else self._old or {}
            spec = table.get(name)
            try:
                self._checkers[key] = CallChecker(spec) if spec is not None else None
            except ValueError:
                self._checkers[key] = None
        return self._checkers[key]

    def call(self, call: TaskCall) -> Outcome:
        where = "" if call.via == "message" else f"{call.via} {call.name}: "
        if call.name not in self._new:
            return Outcome(Verdict.DISCARDED, f"{where}task {call.name!r} is no longer registered")
        if call.prepended is None:
            return _RUNS
        checker = self._checker("new", call.name)
        if checker is None:
            return Outcome(Verdict.UNDECIDABLE, f"{where}signature of {call.name} is unusable")
        args = (None,) * call.prepended + call.args if call.prepended else call.args
        error = checker.error(args, call.kwargs)
        if error is not None:
            return Outcome(Verdict.FAILS, f"{where}TypeError: {error}")
        old = self._checker("old", call.name) if self._old is not None else None
        if old is not None and args:
            before, after = old.positional_slots(len(args)), checker.positional_slots(len(args))
            if before != after:
                moved = ", ".join(f"{b}→{a}" for b, a in zip(before, after, strict=True) if b != a)
                return Outcome(
                    Verdict.MISBOUND, f"{where}positional arguments land on other parameters ({moved})"
                )
        return _RUNS

    def message(self, decoded: DecodedMessage) -> Outcome:
        if len(decoded.calls) == 1:
            return self.call(decoded.calls[0])
        worst = _RUNS
        for call in decoded.calls:
            outcome = self.call(call)
            if _SEVERITY[outcome.verdict] > _SEVERITY[worst.verdict]:
                worst = outcome
        return worst


@dataclass
class Group:
    """Messages of one task with one verdict."""

    task: str
    verdict: Verdict
    count: int = 0
    locations: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    earliest_eta: datetime | None = None
    latest_eta: datetime | None = None
    expired: int = 0
    samples: list[str] = field(default_factory=list)

    def add(
        self, location: str, task_id: str | None, reason: str | None, eta: datetime | None, expired: bool
    ) -> None:
        self.count += 1
        self.locations[location] += 1
        if reason and (reason in self.reasons or len(self.reasons) < 5):
            self.reasons[reason] += 1
        if eta is not None:
            if self.earliest_eta is None or eta < self.earliest_eta:
                self.earliest_eta = eta
            if self.latest_eta is None or eta > self.latest_eta:
                self.latest_eta = eta
        if expired:
            self.expired += 1
        if task_id and len(self.samples) < SAMPLES:
            self.samples.append(task_id)


class Item(NamedTuple):
    """One message from one source: stored bytes, or a call a worker reported already decoded."""

    location: str
    headers: Mapping[str, Any]
    size: int | None
    decoded: DecodedMessage | Undecodable


class Report:
    """Aggregates verdicts; memory is bounded by the number of (task, verdict) pairs."""

    def __init__(self, now: datetime, oversize: int) -> None:
        self.now = now
        self.oversize = oversize
        self.groups: dict[tuple[str, Verdict], Group] = {}
        self.totals: Counter[Verdict] = Counter()
        self.by_location: Counter[str] = Counter()
        self.undecidable_reasons: Counter[str] = Counter()
        self.largest: dict[str, list[tuple[int, str]]] = {}
        self.oversized: Counter[str] = Counter()
        self.expired = 0
        self.notes: list[str] = []
        self.scanned = 0
        self._location_kinds: dict[str, str] = {}

    def add(self, item: Item, outcome: Outcome) -> None:
        decoded = item.decoded
        task = decoded.task_name or "<unknown>"
        headers = item.headers
        eta = parse_time(headers.get("eta")) if headers.get("eta") else None
        expires = parse_time(headers.get("expires")) if headers.get("expires") else None
        expired = expires is not None and expires < self.now
        group = self.groups.get((task, outcome.verdict))
        if group is None:
            group = self.groups[(task, outcome.verdict)] = Group(task, outcome.verdict)
        group.add(item.location, decoded.task_id, outcome.reason, eta, expired)
        self.totals[outcome.verdict] += 1
        kind = self._location_kinds.get(item.location)
        if kind is None:
            kind = self._location_kinds[item.location] = item.location.split(":", 1)[0]
        self.by_location[kind] += 1
        self.scanned += 1
        if expired:
            self.expired += 1
        if outcome.verdict is Verdict.UNDECIDABLE and outcome.reason:
            reason = outcome.reason.split(";")[0][:80]
            if reason in self.undecidable_reasons or len(self.undecidable_reasons) < 20:
                self.undecidable_reasons[reason] += 1
        if item.size is not None:
            heap = self.largest.setdefault(task, [])
            entry = (item.size, decoded.task_id or "?")
            if len(heap) < LARGEST:
                heapq.heappush(heap, entry)
            elif entry > heap[0]:
                heapq.heapreplace(heap, entry)
            if item.size > self.oversize:
                self.oversized[task] += 1

    @property
    def breaking(self) -> int:
        return sum(self.totals[v] for v in BREAKING)

    def sorted_groups(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-_SEVERITY[g.verdict], g.task))


def scan(items: Iterable[Item], judge: Judge, report: Report) -> Report:
    """Judge every item into ``report``."""
    for item in items:
        decoded = item.decoded
        if isinstance(decoded, Undecodable):
            outcome = Outcome(Verdict.UNDECIDABLE, decoded.reason)
        else:
            outcome = judge.message(decoded)
        report.add(item, outcome)
    return report
