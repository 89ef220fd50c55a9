"""The rolling-restart machine, the shutdown machine and the start adapters, on a simulated fleet."""

from __future__ import annotations

import subprocess
import xmlrpc.client

import pytest

from deploykit.brokers.records import MemoryRecordStore
from deploykit.errors import UsageError
from deploykit.orchestrate.adapters import (
    ExecStarter,
    Starter,
    StartFailed,
    SupervisorStarter,
    WorkerRef,
    parse_programs,
)
from deploykit.orchestrate.restart import RestartMachine, RestartOptions
from deploykit.orchestrate.shutdown import ShutdownMachine, ShutdownOptions
from tests.orchestrate.sim import FakeClock, SimFleet, SimWorker, broker


class ReviveStarter(Starter):
    kind = "fake"

    def __init__(self, fleet: SimFleet, fail_on: str | None = None, queues: list[str] | None = None) -> None:
        self.fleet = fleet
        self.fail_on = fail_on
        self.started: list[str] = []
        self.queues = queues

    def target(self, worker: WorkerRef) -> str:
        return f"prog-{worker.name}"

    def start(self, worker: WorkerRef) -> None:
        if worker.nodename == self.fail_on:
            raise StartFailed(f"cannot start {worker.nodename}")
        self.started.append(worker.nodename)
        w = self.fleet.workers[worker.nodename]
        w.alive, w.pid, w.tasks = True, w.pid + 1000, []
        w.queues = list(self.queues or ["celery"])


def three(clock: FakeClock) -> SimFleet:
    return SimFleet(
        clock,
        {
            f"w{i}@h": SimWorker(["celery"], [(f"t{i}", "active", clock.t + 0.5)], pid=100 + i)
            for i in (1, 2, 3)
        },
    )


def test_rolling_restart_in_batches_restarts_everyone_and_clears_the_record():
    clock = FakeClock()
    fleet = three(clock)
    records = MemoryRecordStore()
    starter = ReviveStarter(fleet)
    machine = RestartMachine(
        fleet,
        broker(fleet),
        records,
        starter,
        RestartOptions(batch=2, min_consumers=1),
        timing=clock.timing(),
    )
    result = machine.run()
    assert result.status == "done" and result.exit_code == 0, result.message
    assert [b.workers for b in result.batches] == [["w1@h", "w2@h"], ["w3@h"]]
    assert starter.started == ["w1@h", "w2@h", "w3@h"]
    assert result.restarted == ("w1@h", "w2@h", "w3@h")
    assert all(r.new_pid == r.old_pid + 1000 for b in result.batches for r in b.restarts)
    assert records.load() == []
    # shutdown was sent only after each batch drained (consumer cancelled first)
    order = [c for c, _ in fleet.calls if c in ("cancel_consumer", "shutdown")]
    assert order == ["cancel_consumer", "shutdown", "cancel_consumer", "shutdown"]


def test_budget_refuses_a_batch_too_large_before_changing_anything():
    clock = FakeClock()
    fleet = three(clock)
    result = RestartMachine(
        fleet,
        broker(fleet),
        MemoryRecordStore(),
        ReviveStarter(fleet),
        RestartOptions(batch=3, min_consumers=1),
        timing=clock.timing(),
    ).run()
    assert result.status == "refused" and result.exit_code == 4
    assert [c for c, _ in fleet.calls if c not in ("ping", "gather")] == []


def test_a_failed_start_stops_the_rollout_and_leaves_later_batches_untouched():
    clock = FakeClock()
    fleet = three(clock)
    result = RestartMachine(
        fleet,
        broker(fleet),
        MemoryRecordStore(),
        ReviveStarter(fleet, fail_on="w2@h"),
        RestartOptions(batch=1),
        timing=clock.timing(),
    ).run()
    assert result.status == "failed" and result.exit_code == 1
    assert "cannot start w2@h" in result.message and "later batches are untouched" in result.message
    assert result.restarted == ("w1@h",) and result.untouched == ("w3@h",)
    assert fleet.workers["w3@h"].queues == ["celery"] and fleet.workers["w3@h"].alive


def test_drain_timeout_in_a_batch_rolls_back_and_exits_3():
    clock = FakeClock()
    fleet = three(clock)
    fleet.workers["w1@h"].tasks = [("long", "active", None)]
    result = RestartMachine(
        fleet,
        broker(fleet),
        MemoryRecordStore(),
        ReviveStarter(fleet),
        RestartOptions(drain_timeout=2.0),
        timing=clock.timing(),
    ).run()
    assert result.status == "timeout" and result.exit_code == 3
    assert fleet.workers["w1@h"].queues == ["celery"]  # consumers re-added
    assert fleet.commands("shutdown") == []


def test_manifest_mismatch_fails_and_dry_run_changes_nothing():
    clock = FakeClock()
    fleet = three(clock)
    result = RestartMachine(
        fleet,
        broker(fleet),
        MemoryRecordStore(),
        ReviveStarter(fleet),
        RestartOptions(expected_tasks=frozenset({"t", "new.task"})),
        timing=clock.timing(),
    ).run()
    assert result.status == "failed" and "missing new.task" in result.message

    clock2 = FakeClock()
    fleet2 = three(clock2)
    plan = RestartMachine(
        fleet2,
        broker(fleet2),
        MemoryRecordStore(),
        ReviveStarter(fleet2),
        RestartOptions(batch=2, dry_run=True),
        timing=clock2.timing(),
    ).run()
    assert plan.status == "planned" and plan.exit_code == 0
    assert [[r.target for r in b.restarts] for b in plan.batches] == [["prog-w1", "prog-w2"], ["prog-w3"]]
    assert [c for c, _ in fleet2.calls if c not in ("ping", "gather")] == []


def test_start_timeout_is_exit_3():
    clock = FakeClock()
    fleet = three(clock)

    class Silent(ReviveStarter):
        def start(self, worker: WorkerRef) -> None:
            pass  # never comes back

    result = RestartMachine(
        fleet,
        broker(fleet),
        MemoryRecordStore(),
        Silent(fleet),
        RestartOptions(start_timeout=5),
        timing=clock.timing(),
    ).run()
    assert result.status == "timeout" and "not back within 5s" in result.message


def test_shutdown_waits_for_disappearance_and_times_out_if_it_never_happens():
    clock = FakeClock()
    fleet = SimFleet(clock, {"w1@h": SimWorker(["celery"], [("r", "reserved", None)])})
    result = ShutdownMachine(fleet, broker(kind="rabbitmq"), ShutdownOptions(), timing=clock.timing()).run()
    assert result.status == "done" and result.workers[0].gone and result.held == 1
    assert fleet.commands("shutdown") == [({}, ["w1@h"])]

    class Stubborn(SimFleet):
        def control(self, command, arguments, destination, *, reply=True):
            return {}

    clock2 = FakeClock()
    stubborn = Stubborn(clock2, {"w1@h": SimWorker(["celery"])})
    late = ShutdownMachine(stubborn, broker(), ShutdownOptions(timeout=3), timing=clock2.timing()).run()
    assert late.status == "timeout" and late.exit_code == 3


def test_exec_starter_formats_placeholders_without_a_shell():
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0 if argv[0] != "false" else 1, "", "boom")

    ref = WorkerRef("w1@pod-7", 42, ("celery", "emails"))
    starter = ExecStarter(
        "kubectl delete pod {hostname} --wait=false -l 'q={queues}' # {name} {pid}", run=run
    )
    starter.start(ref)
    assert calls == [
        ["kubectl", "delete", "pod", "pod-7", "--wait=false", "-l", "q=celery,emails", "#", "w1", "42"]
    ]
    with pytest.raises(StartFailed, match="exited 1: boom"):
        ExecStarter("false {nodename}", run=run).start(ref)
    with pytest.raises(UsageError, match="unknown placeholder"):
        ExecStarter("restart {host}")


class FakeSupervisor:
    def __init__(self, infos):
        self.infos = infos
        self.started = []
        self.supervisor = self

    def getAllProcessInfo(self):
        return self.infos

    def getProcessInfo(self, name):
        return next(i for i in self.infos if f"{i['group']}:{i['name']}" == name or i["name"] == name)

    def startProcess(self, name, wait):
        self.started.append(name)
        if name == "busy":
            raise xmlrpc.client.Fault(60, "ALREADY_STARTED")
        return True


def test_supervisor_starter_finds_the_program_by_pid_and_starts_it():
    proxy = FakeSupervisor(
        [
            {"group": "celery", "name": "w1", "pid": 0, "statename": "EXITED"},
            {"group": "busy", "name": "busy", "pid": 55, "statename": "RUNNING"},
        ]
    )
    starter = SupervisorStarter("unix:///x.sock", proxy=proxy)
    proxy.infos[0]["pid"] = 101
    ref = WorkerRef("w1@h", 101)
    assert starter.target(ref) == "celery:w1"
    proxy.infos[0].update(pid=0, statename="EXITED")
    starter.start(ref)
    assert proxy.started == ["celery:w1"]
    with pytest.raises(UsageError, match="--program"):
        starter.target(WorkerRef("w9@h", 999))
    mapped = SupervisorStarter("unix:///x.sock", programs=parse_programs(["w9@h=busy"]), proxy=proxy)
    assert mapped.target(WorkerRef("w9@h", 999)) == "busy"


def test_interrupt_during_a_batch_drain_puts_consumers_back_and_stops():
    clock = FakeClock()
    fleet = three(clock)
    fleet.workers["w1@h"].tasks = [("long", "active", None)]
    start = clock.t

    def ctrl_c(t: float) -> None:
        if t > start + 1.0:
            raise KeyboardInterrupt

    clock.hooks.append(ctrl_c)
    records = MemoryRecordStore()
    result = RestartMachine(
        fleet, broker(fleet), records, ReviveStarter(fleet), RestartOptions(), timing=clock.timing()
    ).run()
    assert result.status == "interrupted" and result.exit_code == 130
    assert "interrupted during drain" in result.message
    assert fleet.workers["w1@h"].queues == ["celery"] and records.load() == []
    assert fleet.commands("shutdown") == [] and result.untouched == ("w2@h", "w3@h")
