"""What the orchestration machines share: time, worker selection, consumer specs and progress."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deploykit.brokers.base import Broker
from deploykit.errors import UsageError
from deploykit.fleet.base import Fleet
from deploykit.fleet.replies import WorkerInfo
from deploykit.inspection import collect_fleet, discover

#: How often the machines poll the workers: reaction time stays well under 0.5 s.
DEFAULT_TICK = 0.2


@dataclass(frozen=True)
class Timing:
    """Injected time: ``clock()`` is monotonic seconds, ``sleep(s)`` waits, ``now()`` is Unix time."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], float] = time.time
    tick: float = DEFAULT_TICK


@dataclass(frozen=True)
class Progress:
    """One progress report: what is left to do, for the live display on stderr."""

    phase: str
    remaining: int
    elapsed: float
    #: Total seen at the start of the phase (for a bar); ``None`` when open-ended.
    total: int | None = None
    detail: str = ""


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """The default progress callback: say nothing."""


def matches(node: str, patterns: Sequence[str]) -> bool:
    """True when ``node`` (``name@host``) matches one of the glob ``patterns`` (all when empty).

    A pattern without ``@`` also matches the part before the ``@``, so ``w1`` selects ``w1@host``.
    """
    if not patterns:
        return True
    name = node.split("@", 1)[0]
    return any(
        fnmatch.fnmatchcase(node, pattern) or ("@" not in pattern and fnmatch.fnmatchcase(name, pattern))
        for pattern in patterns
    )


def select_workers(
    fleet: Fleet,
    broker: Broker,
    patterns: Sequence[str],
    control_exchange: str = "celery",
    builds: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """(all online workers, the selected ones), both sorted.

    With ``builds``, a worker is selected only when it also advertises one of them
    (``WorkerInfo.build``, read from ``stats`` in the round trip of :func:`collect_fleet`); a
    worker that does not answer ``stats`` advertises nothing and is never selected. A build no
    live worker advertises is a :class:`UsageError` naming the live builds (:func:`require_live`).
    """
    if not builds:
        online = sorted(discover(fleet, broker, control_exchange).nodes)
        return online, [node for node in online if matches(node, patterns)]
    view = collect_fleet(fleet, broker, control_exchange, commands={"stats": {}})
    require_live(builds, view.workers)
    online = sorted(w.hostname for w in view.workers)
    wanted = set(builds)
    chosen = {w.hostname for w in view.workers if w.build in wanted and matches(w.hostname, patterns)}
    return online, [node for node in online if node in chosen]


def selection_text(patterns: Sequence[str], builds: Sequence[str] = ()) -> str:
    """``w1@*, w2 on build A, B``: the selection, for messages."""
    text = ", ".join(patterns) if patterns else "any worker"
    return text + (f" on build {', '.join(builds)}" if builds else "")


def live_builds(workers: Sequence[WorkerInfo]) -> str:
    """``A (w1@h, w2@h); B (w3@h); no build (w4@h)``: what each live worker advertises."""
    by_build: dict[str, list[str]] = {}
    for worker in workers:
        key = worker.build if worker.build is not None else ""
        by_build.setdefault(key, []).append(worker.hostname)
    parts = [
        f"{build or 'no build'} ({', '.join(sorted(nodes))})"
        for build, nodes in sorted(by_build.items(), key=lambda item: (item[0] == "", item[0]))
    ]
    return "; ".join(parts) or "none (no worker answers)"


def require_live(builds: Sequence[str], workers: Sequence[WorkerInfo]) -> None:
    """A :class:`UsageError` (exit 2, nothing changed) when some of ``builds`` no live worker
    advertises: a deploy script that names a build nobody runs (a typo, a build already retired)
    learns it at once, with the builds that are live."""
    advertised = {w.build for w in workers}
    dead = [b for b in dict.fromkeys(builds) if b not in advertised]
    if dead:
        raise UsageError(
            f"no live worker runs build {', '.join(repr(b) for b in dead)}; "
            f"live builds: {live_builds(workers)}"
        )


def build_mismatch(advertised: str | None, expected: str) -> str | None:
    """Why a worker advertising ``advertised`` is not back on ``expected``, or ``None`` when it is."""
    if advertised == expected:
        return None
    if advertised is None:
        return f"it advertises no build (expected {expected!r}: does its app call deploykit.celery.install?)"
    return f"it runs build {advertised!r}, expected {expected!r}"


def validate_builds(builds: Sequence[str], what: str = "--build") -> tuple[str, ...]:
    """``builds`` checked by the registry's build id rule (a :class:`UsageError` names the bad one)."""
    from deploykit.registry import validate_build

    return tuple(dict.fromkeys(validate_build(build, what=f"{what} build id") for build in builds))


#: Keys of ``Queue.as_dict()`` that ``add_consumer`` may pass on to ``Queue.from_dict`` (kombu).
_QUEUE_OPTIONS = (
    "queue_arguments",
    "binding_arguments",
    "consumer_arguments",
    "durable",
    "exclusive",
    "auto_delete",
    "no_ack",
    "expires",
    "message_ttl",
    "max_length",
    "max_length_bytes",
    "max_priority",
)


def add_consumer_arguments(queue: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments of the ``add_consumer`` control that re-create the consumer ``spec`` described.

    The worker uses its own app's definition when it knows the queue (celery
    ``Consumer.add_task_queue``); otherwise these re-declare exactly what ``active_queues`` reported
    (exchange, type, routing key, ``x-queue-type`` and other arguments).
    """
    exchange = spec.get("exchange")
    arguments: dict[str, Any] = {"queue": queue}
    if isinstance(exchange, Mapping):
        arguments["exchange"] = exchange.get("name") or queue
        arguments["exchange_type"] = exchange.get("type") or "direct"
    elif isinstance(exchange, str):
        arguments["exchange"] = exchange
    if isinstance(spec.get("routing_key"), str):
        arguments["routing_key"] = spec["routing_key"]
    for key in _QUEUE_OPTIONS:
        if spec.get(key) is not None:
            arguments[key] = spec[key]
    return arguments


@dataclass
class Clockwork:
    """Elapsed time and deadline of one run."""

    timing: Timing
    timeout: float | None
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.timing.clock()

    @property
    def elapsed(self) -> float:
        return self.timing.clock() - self.started

    @property
    def left(self) -> float | None:
        return None if self.timeout is None else self.timeout - self.elapsed

    @property
    def expired(self) -> bool:
        left = self.left
        return left is not None and left <= 0


def listed_mailboxes(broker: Broker, control_exchange: str = "celery") -> set[str] | None:
    """Workers whose remote-control mailbox the broker lists right now; ``None``: it cannot tell.

    A cheap, immediate signal: a worker's mailbox goes away as soon as a warm shutdown begins and
    appears as soon as a new worker is up (measured: ~0.2 s, where a missed ping costs the whole
    reply timeout). On Redis an absent binding set (``None``) means no mailbox at all.
    """
    try:
        listed = broker.worker_mailboxes(control_exchange)
    except Exception:  # a hint only: the ping still decides
        return None
    if listed is None:
        return set() if broker.kind == "redis" else None
    return set(listed)
