"""A simulated fleet on a fake clock, built on tests/fakes.py, for the orchestration machines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deploykit.fleet.base import Replies
from deploykit.orchestrate.common import Timing
from tests.fakes import FakeBroker, FakeFleet


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.sleeps: list[float] = []
        #: Called after every sleep, so the simulation can move (tasks finish, workers die...).
        self.hooks: list[Any] = []

    def clock(self) -> float:
        return self.t

    def now(self) -> float:
        return 1_700_000_000.0 + self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        for hook in self.hooks:
            hook(self.t)

    def timing(self, tick: float = 0.2) -> Timing:
        return Timing(clock=self.clock, sleep=self.sleep, now=self.now, tick=tick)


def queue_spec(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "exchange": {"name": name, "type": "direct"},
        "routing_key": name,
        "queue_arguments": None,
        "durable": True,
    }


@dataclass
class SimWorker:
    queues: list[str]
    #: (task id, state, finishes at clock time or None)
    tasks: list[tuple[str, str, float | None]] = field(default_factory=list)
    alive: bool = True
    #: Ignore cancel_consumer (a worker that does not ack).
    deaf_to_cancel: bool = False
    pid: int = 100
    #: The build the worker advertises (``stats["deploykit"]["build"]``, like deploykit.celery's bootstep).
    build: str | None = None


class SimFleet(FakeFleet):
    """Workers whose consumers and held tasks change as the commands and the clock say."""

    def __init__(self, clock: FakeClock, workers: Mapping[str, SimWorker]) -> None:
        super().__init__({})
        self.clock = clock
        self.workers = dict(workers)

    def _reply(self, node: str, command: str) -> Any:
        w = self.workers[node]
        now = self.clock.t
        live = [(i, s, end) for i, s, end in w.tasks if end is None or end > now]
        if command == "active_queues":
            return [queue_spec(q) for q in w.queues]
        if command in ("active", "reserved"):
            return [
                {
                    "id": i,
                    "type": "t",
                    "delivery_info": {"routing_key": w.queues[0] if w.queues else "celery"},
                }
                for i, s, _ in live
                if s == command
            ]
        if command == "scheduled":
            return [
                {"eta": "2030-01-01T00:00:00+00:00", "priority": 6, "request": {"id": i, "type": "t"}}
                for i, s, _ in live
                if s == "scheduled"
            ]
        if command == "stats":
            return {"pid": w.pid} if w.build is None else {"pid": w.pid, "deploykit": {"build": w.build}}
        if command == "ping":
            return {"ok": "pong"}
        if command == "registered":
            return ["t"]
        raise KeyError(command)

    def ping(self, destination: Sequence[str] | None = None) -> list[str]:
        self.calls.append(("ping", None if destination is None else list(destination)))
        nodes = self.workers if destination is None else destination
        return sorted(n for n in nodes if n in self.workers and self.workers[n].alive)

    def gather(self, commands: Mapping[str, Mapping[str, Any]], destination: Sequence[str]) -> Replies:
        self.calls.append(("gather", (sorted(commands), list(destination))))
        by: dict[str, dict[str, Any]] = {c: {} for c in commands}
        missing = []
        for node in destination:
            if node not in self.workers or not self.workers[node].alive:
                missing.append(node)
                continue
            for command in commands:
                by[command][node] = self._reply(node, command)
        return Replies(by, missing=tuple(sorted(missing)))

    def control(
        self, command: str, arguments: Mapping[str, Any], destination: Sequence[str], *, reply: bool = True
    ) -> Mapping[str, Any]:
        self.calls.append((command, (dict(arguments), list(destination))))
        answers = {}
        for node in destination:
            w = self.workers.get(node)
            if w is None or not w.alive:
                continue
            if command == "cancel_consumer":
                if w.deaf_to_cancel:
                    continue
                if arguments["queue"] in w.queues:
                    w.queues.remove(arguments["queue"])
            elif command == "add_consumer":
                if arguments["queue"] not in w.queues:
                    w.queues.append(arguments["queue"])
            elif command == "shutdown":
                w.alive = False
                continue
            answers[node] = {"ok": command}
        return answers if reply else {}

    def commands(self, name: str) -> list[Any]:
        return [args for command, args in self.calls if command == name]


class SimBroker(FakeBroker):
    """A fake broker that lists the mailboxes of the simulated fleet's live workers."""

    fleet: SimFleet | None = None

    def worker_mailboxes(self, control_exchange: str = "celery") -> list[str] | None:
        if self.fleet is None:
            return None
        return sorted(n for n, w in self.fleet.workers.items() if w.alive)


def broker(fleet: SimFleet | None = None, **kwargs: Any) -> FakeBroker:
    kwargs.setdefault("mailboxes", None)
    fake = SimBroker(**kwargs)
    fake.fleet = fleet
    return fake
