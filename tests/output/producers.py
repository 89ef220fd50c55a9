"""Core results for every published JSON document, produced by the real core on fakes.

Each producer returns what a command hands to :mod:`deploykit.output.documents`; the golden
tests (``test_documents.py``) pin the shape of the documents built from them.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from typing import Any

from deploykit.brokers.base import BrokerSettings, DelayedStore, QueueStats, RawMessage
from deploykit.brokers.records import ConsumerRecord, MemoryRecordStore
from deploykit.inspection import collect_fleet, collect_queues, collect_scheduled, collect_status
from deploykit.manifest.model import Manifest, Parameter, Task
from deploykit.messages import StoredHeaders
from deploykit.orchestrate.deploy import DeployMachine, DeployOptions
from deploykit.orchestrate.drain import DrainMachine, DrainOptions
from deploykit.orchestrate.restart import RestartMachine, RestartOptions
from deploykit.orchestrate.resume import resume
from deploykit.orchestrate.shutdown import ShutdownMachine, ShutdownOptions
from tests.fakes import FakeBroker, FakeFleet
from tests.orchestrate.sim import FakeClock, SimFleet, SimWorker, broker

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=timezone.utc)
BROKER = "redis://:****@127.0.0.1:6379/0"


def _request(task_id: str, name: str) -> dict[str, Any]:
    return {
        "id": task_id,
        "name": name,
        "type": name,
        "args": [1, 2],
        "kwargs": {"to": "a@b"},
        "delivery_info": {"exchange": "celery", "routing_key": "celery", "priority": 3, "redelivered": False},
        "acknowledged": False,
    }


def _worker(pid: int, *, active: tuple[Any, ...] = (), scheduled: tuple[Any, ...] = ()) -> dict[str, Any]:
    return {
        "ping": {"ok": "pong"},
        "stats": {
            "pid": pid,
            "uptime": 3725,
            "prefetch_count": 4,
            "pool": {"implementation": "celery.concurrency.prefork:TaskPool", "max-concurrency": 2},
            "deploykit": {"build": "2026.12.01-abc123"},
        },
        "active_queues": [{"name": "celery", "exchange": {"name": "celery"}, "routing_key": "celery"}],
        "active": list(active),
        "reserved": [],
        "scheduled": [{"eta": eta.isoformat(), "priority": 6, "request": req} for eta, req in scheduled],
        "report": {"ok": "software -> celery:5.7.0 (recovery) kombu:5.7.0 py:3.11.7\n"},
    }


def _orphan(task_id: str, eta: datetime) -> RawMessage:
    headers = StoredHeaders(id=task_id, task="t.late", eta=eta.isoformat(), deploykit_build="2026.11.20-old")
    return RawMessage("unacked", "celery", headers, "", None, None, None, 0, delivery_tag=task_id)


def _inspection() -> tuple[FakeBroker, FakeFleet]:
    far = NOW + timedelta(hours=3)
    fleet = FakeFleet(
        {
            "w1@h": _worker(
                100, active=(_request("a1", "t.add"),), scheduled=((far, _request("e1", "t.later")),)
            ),
            "w2@h": _worker(200),
        },
        silent=["w2@h"],
    )
    fake = FakeBroker(
        [
            QueueStats("celery", ready=4, unacked=2, unacked_eta=1, ready_by_priority={0: 3, 3: 1}),
            QueueStats("reports", ready=1, unacked=0, unacked_eta=0),
        ],
        known=["celery", "reports"],
        mailboxes=["w1@h", "w2@h"],
        unacked=[_orphan("o1", far)],
        settings=BrokerSettings(visibility_timeout=3600.0),
        delayed=DelayedStore(queues=("celery_delayed_3",), messages=2, note="counted"),
        notes=("a broker note",),
    )
    return fake, fleet


def workers() -> Any:
    fake, fleet = _inspection()
    return collect_fleet(fleet, fake)


def queues() -> Any:
    fake, fleet = _inspection()
    return collect_queues(fake, collect_fleet(fleet, fake), ["celery"])


def scheduled() -> tuple[Any, Any]:
    fake, fleet = _inspection()
    fleet_view = collect_fleet(fleet, fake)
    queues_view = collect_queues(fake, fleet_view, ["celery"])
    view = collect_scheduled(
        fake, fleet_view, NOW, None, delayed=queues_view.delayed, queues=queues_view.queues
    )
    return view, fleet_view


def status() -> Any:
    fake, fleet = _inspection()
    return collect_status(fake, fleet, NOW, ["celery"])


def _busy(clock: FakeClock) -> SimFleet:
    return SimFleet(
        clock,
        {
            "w1@h": SimWorker(["celery", "emails"], [("a", "active", clock.t + 1.0)], pid=101),
            "w2@h": SimWorker(["celery"], pid=102),
        },
    )


def drain() -> Any:
    clock = FakeClock()
    fleet = _busy(clock)
    fleet.workers["w1@h"].tasks.append(("e1", "scheduled", None))  # an ETA task it keeps holding
    options = DrainOptions(workers=("w1",))
    return DrainMachine(fleet, broker(fleet), MemoryRecordStore(), options, timing=clock.timing()).run()


def resume_result() -> Any:
    clock = FakeClock()
    fleet = SimFleet(clock, {"w1@h": SimWorker([])})
    records = MemoryRecordStore([ConsumerRecord("w1@h", "celery"), ConsumerRecord("gone@h", "emails")])
    return resume(fleet, records, (), timing=clock.timing())


def shutdown() -> Any:
    clock = FakeClock()
    fleet = SimFleet(clock, {"w1@h": SimWorker(["celery"], [("r1", "reserved", None)], pid=101)})
    return ShutdownMachine(fleet, broker(fleet), ShutdownOptions(timeout=10), timing=clock.timing()).run()


class _Revive:
    """A starter that brings the simulated worker back at once."""

    kind = "fake"

    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet

    def target(self, worker: Any) -> str:
        return f"prog-{worker.name}"

    def start(self, worker: Any) -> None:
        w = self.fleet.workers[worker.nodename]
        w.alive, w.pid, w.tasks, w.queues = True, w.pid + 1000, [], ["celery"]

    def close(self) -> None:
        pass


def restart() -> Any:
    clock = FakeClock()
    fleet = _busy(clock)
    machine = RestartMachine(
        fleet,
        broker(fleet),
        MemoryRecordStore(),
        _Revive(fleet),  # type: ignore[arg-type]
        RestartOptions(batch=1),
        timing=clock.timing(),
    )
    return machine.run()


def deploy() -> Any:
    clock = FakeClock()
    fleet = _busy(clock)

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        for w in fleet.workers.values():
            w.alive, w.queues, w.tasks = True, ["celery"], []
        return subprocess.CompletedProcess(argv, 0, "", "")

    options = DeployOptions(command=("./release.sh",))
    return DeployMachine(
        fleet, broker(fleet), MemoryRecordStore(), options, timing=clock.timing(), run=run
    ).run()


def manifests() -> tuple[Manifest, Manifest]:
    def task(*params: str) -> Task:
        return Task(
            "t.notify",
            tuple(Parameter(p, "POSITIONAL_OR_KEYWORD") for p in params),
            qualname="notify",
            file="proj/tasks.py",
            line=12,
        )

    old = Manifest(tasks={"t.notify": task("user"), "t.gone": Task("t.gone", (), qualname="gone")})
    return old, Manifest(tasks={"t.notify": task("user", "channel")})


def findings() -> Any:
    from deploykit.manifest.check import compare

    old, new = manifests()
    return compare(old, new, command="diff", old_label="old.json", new_label="new.json")


def doctor() -> tuple[Any, Any]:
    from deploykit.doctor.checks import run_checks
    from deploykit.doctor.model import Audit, ConfigSource

    settings = {"task_acks_late": True, "task_reject_on_worker_lost": False, "worker_prefetch_multiplier": 8}
    audit = Audit(broker_kind="redis", app=ConfigSource("app", settings, explicit=frozenset(settings)))
    return audit, run_checks(audit)


def probe() -> Any:
    from deploykit.probe import ProbeReport, ProbeResult

    return ProbeReport(
        results=(
            ProbeResult(
                "celery",
                "processed",
                worker="w1@h",
                latency=0.0123,
                consumers=("w1@h",),
                ready_ahead=0,
                task_id="p1",
            ),
            ProbeResult(
                "emails", "timeout", consumers=("w2@h",), ready_ahead=3, task_id="p2", detail="not run in 10s"
            ),
        ),
        confirmed_via="result-backend",
        timeout=10.0,
        elapsed=10.2,
        events_enabled_on=("w2@h",),
        notes=("a note",),
    )


def scan() -> Any:
    from tests.scan.test_output import stamped_report

    return stamped_report()
