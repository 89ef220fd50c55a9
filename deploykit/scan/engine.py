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

Each message is judged against the code that produced it when that is known: a message stamped
with a ``deploykit_build`` header whose build has a manifest in the registry is judged with that
manifest as the old side (:class:`OldBuilds`, one judge per build, loaded once per scan); an
unstamped message, or one of a build the registry does not know, against the old manifest given
(``--manifest``), if any.

Beat schedule entries are judged the same way but counted apart: an entry is not a message (it
becomes one at its next run), so ``Report.scanned`` and ``Report.totals`` count messages only and
``Report.beat_entries``/``Report.beat_totals`` count entries. What the scan could not read is
recorded as :class:`Unchecked` (how many, why, how to check them): a report with unchecked
messages is *incomplete*, never OK.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, NamedTuple

from deploykit.brokers.base import RawMessage
from deploykit.errors import UsageError
from deploykit.messages import StoredHeaders, parse_time
from deploykit.scan.bind import CallChecker, TaskSpec
from deploykit.scan.decode import (
    PLACEHOLDER,
    DecodedMessage,
    Shape,
    TaskCall,
    Undecodable,
    decode,
    plain_call_shape,
)


class Verdict(str, Enum):
    # Hashed once per scanned message (report groups): Enum's own __hash__ is Python code.
    __hash__ = str.__hash__

    RUNS = "runs"
    MISBOUND = "misbound"
    FAILS = "fails"
    DISCARDED = "discarded"
    UNDECIDABLE = "undecidable"


#: Verdicts that stop a deploy (exit 1).
BREAKING = (Verdict.MISBOUND, Verdict.FAILS, Verdict.DISCARDED)
#: Item locations that are beat schedule entries (the app's ``beat_schedule``, django-celery-beat
#: rows), not messages.
BEAT_LOCATIONS = ("beat:", "beat-db:")
_SEVERITY = {
    Verdict.RUNS: 0,
    Verdict.UNDECIDABLE: 1,
    Verdict.DISCARDED: 2,
    Verdict.FAILS: 3,
    Verdict.MISBOUND: 4,
}
SAMPLES = 3
LARGEST = 3
#: Call shapes whose outcome the judge remembers.
MAX_SHAPES = 10_000
#: Distinct builds whose manifest a scan looks up (and keeps a judge for); messages of further
#: builds are judged as of an unknown build. The registry keeps 50 by default.
MAX_BUILDS = 200


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str | None = None


_RUNS = Outcome(Verdict.RUNS)


class Judge:
    """Classifies calls against the new (and optionally old) task signatures, with caching."""

    def __init__(
        self,
        new: Mapping[str, TaskSpec],
        old: Mapping[str, TaskSpec] | None = None,
        renames: Mapping[str, Mapping[str, str]] | None = None,
        *,
        builds: OldBuilds | None = None,
    ) -> None:
        self._new = new
        #: The judges of stamped messages whose build has a manifest (``None``: every message is
        #: judged by this judge, stamped or not).
        self.builds = builds
        self._old = old
        #: Task -> {old parameter name: new name} for parameters renamed in place (the diff's
        #: PARAM_RENAMED pairs): a positional value that lands on the renamed parameter lands
        #: where it did before.
        self._renames = renames or {}
        self._checkers: dict[tuple[str, str], CallChecker | None] = {}
        # A call's outcome depends only on its shape: task, how it is called, the number of
        # positional arguments and the keyword names (in order: the TypeError names the first
        # unexpected one). A queue holds few shapes; the bound keeps hostile variety in check.
        self._outcomes: dict[tuple[str, str, int | None, int, tuple[str, ...]], Outcome] = {}
        #: Outcomes of plain messages by shape (read directly by the scan's hot loop).
        self.plain_outcomes: dict[Shape, Outcome] = {}

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
        shape = (call.name, call.via, call.prepended, len(call.args), tuple(call.kwargs))
        outcome = self._outcomes.get(shape)
        if outcome is None:
            outcome = self._judge(call)
            if len(self._outcomes) < MAX_SHAPES:
                self._outcomes[shape] = outcome
        return outcome

    def plain(self, shape: Shape) -> Outcome:
        """The outcome of a message that is just one call of this shape (no embedded signatures)."""
        outcome = self.plain_outcomes.get(shape)
        if outcome is None:
            name, positional, keywords = shape
            args = (PLACEHOLDER,) * positional
            outcome = self.call(TaskCall(name, args, dict.fromkeys(keywords, PLACEHOLDER)))
            if len(self.plain_outcomes) < MAX_SHAPES:
                self.plain_outcomes[shape] = outcome
        return outcome

    def _judge(self, call: TaskCall) -> Outcome:
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
            renamed = self._renames.get(call.name, {})
            before = tuple(renamed.get(slot, slot) for slot in old.positional_slots(len(args)))
            after = checker.positional_slots(len(args))
            moved = ", ".join(
                f"{b}→{a}" for b, a in zip(before, after, strict=True) if _slot_key(b) != _slot_key(a)
            )
            if moved:
                return Outcome(
                    Verdict.MISBOUND, f"{where}positional arguments land on other parameters ({moved})"
                )
        return _RUNS

    def for_build(self, build: Any) -> Judge:
        """The judge of a message stamped ``build`` (``None``: unstamped): that build's own when
        the registry has its manifest, else this one."""
        if build is None or self.builds is None:
            return self
        return self.builds.judge(build) or self

    def message(self, decoded: DecodedMessage) -> Outcome:
        if len(decoded.calls) == 1:
            return self.call(decoded.calls[0])
        worst = _RUNS
        for call in decoded.calls:
            outcome = self.call(call)
            if _SEVERITY[outcome.verdict] > _SEVERITY[worst.verdict]:
                worst = outcome
        return worst


class _Unreadable(Judge):
    """The judge of a build whose registry entry cannot be trusted: every call is undecidable."""

    def __init__(self, reason: str) -> None:
        super().__init__({})
        self._outcome = Outcome(Verdict.UNDECIDABLE, reason)

    def call(self, call: TaskCall) -> Outcome:
        return self._outcome

    def plain(self, shape: Shape) -> Outcome:
        return self._outcome

    def message(self, decoded: DecodedMessage) -> Outcome:
        return self._outcome


#: Loads the judge of a build from the registry: ``None`` when it has no manifest for the build;
#: raises :class:`~deploykit.errors.UsageError` when its entry is corrupt or from a newer deploykit.
BuildLoader = Callable[[str], "Judge | None"]


class BuildStatus(str, Enum):
    __hash__ = str.__hash__

    #: Judged against the build's manifest from the registry.
    MANIFEST = "manifest"
    #: The registry has no manifest for it (or there is no registry): judged as unstamped.
    UNKNOWN = "unknown"
    #: Its registry entry is corrupt or from a newer deploykit: its messages are undecidable.
    UNREADABLE = "unreadable"


@dataclass
class BuildCount:
    """Messages of one build, and how they were judged."""

    build: str
    status: BuildStatus
    messages: int = 0
    #: Why the build's entry could not be used (``UNREADABLE``).
    problem: str | None = None


class OldBuilds:
    """The old side of each stamped message: the manifest of its build, from the registry.

    Each build's manifest is loaded at most once per scan, when its first message is met, and
    its judge (with its own outcome caches: the fast path's cache is keyed by build, then
    shape) is kept for the rest of the scan; at most :data:`MAX_BUILDS` builds are looked up.
    Counts the messages of each build for the report.
    """

    def __init__(self, load: BuildLoader | None, *, registry: str | None = None, problem: str | None = None):
        self._load = load
        #: Where the registry is (for humans), or ``None`` when there is none.
        self.registry = registry
        #: Why there is no registry (when there is none and it matters).
        self.problem = problem
        self._judges: dict[str, Judge | None] = {}
        self.counts: dict[str, BuildCount] = {}
        #: Stamped messages beyond :data:`MAX_BUILDS` builds, or with a header that is no string.
        self.other = 0

    def judge(self, build: Any) -> Judge | None:
        """The judge of a message stamped ``build``; ``None``: judge it as an unstamped message."""
        count = self.counts.get(build) if type(build) is str else None
        if count is None:
            if type(build) is not str or len(self.counts) >= MAX_BUILDS:
                self.other += 1
                return None
            count = self.counts[build] = self._resolve(build)
        count.messages += 1
        return self._judges[build]

    def _resolve(self, build: str) -> BuildCount:
        judge: Judge | None = None
        status, problem = BuildStatus.UNKNOWN, None
        if self._load is not None:
            try:
                judge = self._load(build)
            except UsageError as exc:  # a corrupt or future entry: never guessed at
                problem = exc.message
                judge, status = _Unreadable(f"build {build!r}: {problem}"), BuildStatus.UNREADABLE
            else:
                status = BuildStatus.MANIFEST if judge is not None else BuildStatus.UNKNOWN
        self._judges[build] = judge
        return BuildCount(build, status, problem=problem)

    @property
    def stamped(self) -> int:
        return sum(c.messages for c in self.counts.values()) + self.other

    def messages(self, status: BuildStatus) -> int:
        return sum(c.messages for c in self.counts.values() if c.status is status)

    @property
    def unknown(self) -> int:
        """Stamped messages judged as unstamped ones: their build has no manifest (or beyond the
        bound, or a header that is no build id)."""
        return self.messages(BuildStatus.UNKNOWN) + self.other

    def rows(self) -> list[BuildCount]:
        """Every build met, the most messages first."""
        return sorted(self.counts.values(), key=lambda c: (-c.messages, c.build))

    def summary(self, old: str | None) -> str | None:
        """One line: messages judged per old build, of an unknown build, undecidable per build
        (``old``: what unstamped messages were judged against); ``None`` when none is stamped."""
        if not self.stamped:
            return None
        judged = [c for c in self.rows() if c.status is BuildStatus.MANIFEST]
        parts = []
        if judged:
            shown = ", ".join(f"{c.build} {c.messages}" for c in judged[:5])
            more = f" +{len(judged) - 5} more build(s)" if len(judged) > 5 else ""
            parts.append(f"judged against their build's manifest: {shown}{more}")
        if self.unknown:
            against = f"judged against {old}" if old else "no old side"
            where = f"registry: {self.registry}" if self.registry else f"no registry: {self.problem}"
            parts.append(f"{self.unknown} of an unknown build ({against}; {where})")
        for c in self.rows():
            if c.status is BuildStatus.UNREADABLE:
                parts.append(f"{c.messages} of build {c.build} undecidable (its registry entry is unusable)")
        return f"stamped messages ({self.stamped}): " + "; ".join(parts)


def _slot_key(slot: str) -> str:
    """Extra positional values land in ``*args`` whatever it is called."""
    return "*" if slot.startswith("*") else slot


@dataclass
class Group:
    """Messages (and beat entries, counted apart) of one task with one verdict."""

    task: str
    verdict: Verdict
    #: Messages (queued, held by workers): beat entries are not counted here.
    count: int = 0
    #: Beat schedule entries with this verdict.
    beat: int = 0
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


@dataclass(frozen=True)
class Unchecked:
    """Waiting messages the scan knows of but did not read: they keep the report from being OK."""

    #: Where they wait: ``queue:NAME``, ``delayed:NAME``, ``workers``.
    location: str
    #: How many the broker reports; ``None`` when it cannot tell.
    count: int | None
    #: Why they were not read, and how to check them (one short clause each).
    reason: str
    remedy: str


class Item(NamedTuple):
    """One message from one source: stored bytes, or a call a worker reported already decoded."""

    location: str
    headers: StoredHeaders
    size: int | None
    decoded: DecodedMessage | Undecodable


class Report:
    """Aggregates verdicts; memory is bounded by the number of (task, verdict) pairs.

    :meth:`add` runs once per waiting message (millions in a big queue), so it only touches its
    group; totals are derived from the groups when asked.
    """

    def __init__(self, now: datetime, oversize: int) -> None:
        self.now = now
        self.oversize = oversize
        self.groups: dict[tuple[str, Verdict], Group] = {}
        self.undecidable_reasons: Counter[str] = Counter()
        self.largest: dict[str, list[tuple[int, str]]] = {}
        self.oversized: Counter[str] = Counter()
        self.notes: list[str] = []
        #: Messages judged (beat entries are counted in :attr:`beat_entries`).
        self.scanned = 0
        self.beat_entries = 0
        self.unchecked: list[Unchecked] = []
        #: The builds of stamped messages and how each was judged (``None``: not tracked).
        self.old_builds: OldBuilds | None = None

    @property
    def totals(self) -> Counter[Verdict]:
        """Messages per verdict."""
        totals: Counter[Verdict] = Counter()
        for group in self.groups.values():
            totals[group.verdict] += group.count
        return totals

    @property
    def beat_totals(self) -> Counter[Verdict]:
        """Beat entries per verdict."""
        totals: Counter[Verdict] = Counter()
        for group in self.groups.values():
            totals[group.verdict] += group.beat
        return totals

    @property
    def unchecked_count(self) -> int:
        """Waiting messages known to be unchecked (those of unknown number not included)."""
        return sum(u.count or 0 for u in self.unchecked)

    @property
    def unchecked_unknown(self) -> bool:
        """Some unchecked messages are of unknown number (the broker could not tell)."""
        return any(u.count is None for u in self.unchecked)

    @property
    def waiting(self) -> int:
        """Every waiting message known: those checked and those not."""
        return self.scanned + self.unchecked_count

    @property
    def incomplete(self) -> bool:
        return any(u.count is None or u.count > 0 for u in self.unchecked)

    @property
    def by_location(self) -> Counter[str]:
        kinds: Counter[str] = Counter()
        for group in self.groups.values():
            for location, count in group.locations.items():
                kinds[location.split(":", 1)[0]] += count
        return kinds

    @property
    def expired(self) -> int:
        return sum(group.expired for group in self.groups.values())

    def add_item(self, item: Item, outcome: Outcome) -> None:
        decoded = item.decoded
        if item.location.startswith(BEAT_LOCATIONS):
            self.add_beat(item.location, decoded.task_name, outcome)
            return
        self.add(item.location, item.headers, item.size, decoded.task_name, decoded.task_id, outcome)

    def add_beat(self, location: str, task_name: str | None, outcome: Outcome) -> None:
        """One beat schedule entry (counted apart from messages)."""
        task = task_name or "<unknown>"
        group = self.groups.get((task, outcome.verdict))
        if group is None:
            group = self.groups[(task, outcome.verdict)] = Group(task, outcome.verdict)
        group.beat += 1
        group.locations[location] += 1
        reason = outcome.reason
        if reason and (reason in group.reasons or len(group.reasons) < 5):
            group.reasons[reason] += 1
        self.beat_entries += 1
        self._undecidable_reason(outcome)

    def add(
        self,
        location: str,
        headers: StoredHeaders,
        size: int | None,
        task_name: str | None,
        task_id: str | None,
        outcome: Outcome,
    ) -> None:
        task = task_name or "<unknown>"
        verdict = outcome.verdict
        group = self.groups.get((task, verdict))
        if group is None:
            group = self.groups[(task, verdict)] = Group(task, verdict)
        raw_eta = headers.eta
        raw_expires = headers.expires
        reason = outcome.reason
        if raw_eta or raw_expires or len(group.samples) < SAMPLES:
            eta = parse_time(raw_eta) if raw_eta else None
            expires = parse_time(raw_expires) if raw_expires else None
            group.add(location, task_id, reason, eta, expires is not None and expires < self.now)
        else:  # the common case: no times to read, samples taken
            group.count += 1
            group.locations[location] += 1
            if reason and (reason in group.reasons or len(group.reasons) < 5):
                group.reasons[reason] += 1
        self.scanned += 1
        if verdict is Verdict.UNDECIDABLE:
            self._undecidable_reason(outcome)
        if size is not None:
            heap = self.largest.get(task)
            if heap is None:
                heap = self.largest[task] = []
            if len(heap) < LARGEST:
                heapq.heappush(heap, (size, task_id or "?"))
            elif size > heap[0][0]:
                heapq.heapreplace(heap, (size, task_id or "?"))
            if size > self.oversize:
                self.oversized[task] += 1

    def _undecidable_reason(self, outcome: Outcome) -> None:
        if outcome.verdict is Verdict.UNDECIDABLE and outcome.reason:
            reason = outcome.reason.split(";")[0][:80]
            if reason in self.undecidable_reasons or len(self.undecidable_reasons) < 20:
                self.undecidable_reasons[reason] += 1

    @property
    def breaking_messages(self) -> int:
        """Messages that would fail, be discarded or misbind."""
        totals = self.totals
        return sum(totals[v] for v in BREAKING)

    @property
    def breaking_beat(self) -> int:
        """Beat entries whose next run would fail, be discarded or misbind."""
        totals = self.beat_totals
        return sum(totals[v] for v in BREAKING)

    @property
    def breaking(self) -> int:
        """Messages and beat entries that break: any stops a deploy."""
        return self.breaking_messages + self.breaking_beat

    @property
    def verdict(self) -> str:
        """``unsafe`` (something breaks), else ``incomplete`` (something not read), else ``ok``."""
        if self.breaking:
            return "unsafe"
        return "incomplete" if self.incomplete else "ok"

    def incomplete_summary(self) -> str | None:
        """``N of M waiting message(s) not checked (why: how to check them)``, or ``None``."""
        if not self.incomplete:
            return None
        by_cause: dict[tuple[str, str], list[Unchecked]] = {}
        for item in self.unchecked:
            if item.count != 0:
                by_cause.setdefault((item.reason, item.remedy), []).append(item)
        causes = []
        for (reason, remedy), items in by_cause.items():
            known = [i.count for i in items if i.count is not None]
            count = str(sum(known)) if len(known) == len(items) else "?"
            where = ", ".join(i.location for i in items[:3])
            if len(items) > 3:
                where += f" +{len(items) - 3} more"
            causes.append(f"{count} in {where}: {reason}; {remedy}")
        head = f"{self.unchecked_count} of {self.waiting} waiting message(s) not checked"
        if self.unchecked_unknown:
            head += ", and an unknown number more"
        return f"{head} ({' | '.join(causes)})"

    def sorted_groups(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-_SEVERITY[g.verdict], g.task))


def judge_raw(raws: Iterable[RawMessage], location: str, judge: Judge, report: Report) -> None:
    """Decode, judge and count stored messages: the scan's hot loop, with no per-message wrapper."""
    add = report.add
    outcomes = judge.plain_outcomes
    builds = judge.builds
    if builds is not None:
        report.old_builds = builds
    for raw in raws:
        headers = raw.headers
        build = headers.deploykit_build
        # Unstamped (the usual case today): this judge; stamped: the judge of its build, whose
        # outcome cache is its own (the cache is keyed by build, then shape).
        by = judge if build is None or builds is None else builds.judge(build) or judge
        shape = plain_call_shape(raw)
        if shape is not None:
            task_id = headers.id
            outcome = (outcomes if by is judge else by.plain_outcomes).get(shape) or by.plain(shape)
            add(location, headers, raw.size, shape[0], task_id if type(task_id) is str else None, outcome)
            continue
        decoded = decode(raw)
        if isinstance(decoded, Undecodable):
            outcome = Outcome(Verdict.UNDECIDABLE, decoded.reason)
        else:
            outcome = by.message(decoded)
        add(location, headers, raw.size, decoded.task_name, decoded.task_id, outcome)


def scan(items: Iterable[Item], judge: Judge, report: Report) -> Report:
    """Judge every item into ``report``."""
    if judge.builds is not None:
        report.old_builds = judge.builds
    for item in items:
        decoded = item.decoded
        by = judge.for_build(item.headers.deploykit_build)
        if isinstance(decoded, Undecodable):
            outcome = Outcome(Verdict.UNDECIDABLE, decoded.reason)
        else:
            outcome = by.message(decoded)
        report.add_item(item, outcome)
    return report
