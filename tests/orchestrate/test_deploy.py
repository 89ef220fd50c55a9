"""The one-shot deploy machine on a simulated fleet."""

from __future__ import annotations

import subprocess

from deploykit.brokers.records import MemoryRecordStore
from deploykit.orchestrate.deploy import DeployMachine, DeployOptions, parse_command
from tests.orchestrate.sim import FakeClock, SimFleet, SimWorker, broker


def fleet_of(clock: FakeClock) -> SimFleet:
    return SimFleet(
        clock,
        {
            "w1@h": SimWorker(["celery"], [("a", "active", clock.t + 0.4), ("r", "reserved", clock.t + 0.8)]),
            "w2@h": SimWorker(["celery"]),
        },
    )


def test_deploy_drains_stops_runs_and_waits_for_the_new_workers():
    clock = FakeClock()
    fleet = fleet_of(clock)
    records = MemoryRecordStore()
    ran = []

    def run(argv, **kwargs):
        ran.append((argv, [n for n, w in fleet.workers.items() if w.alive]))
        for w in fleet.workers.values():
            w.alive, w.queues, w.tasks = True, ["celery"], []
        return subprocess.CompletedProcess(argv, 0, "", "")

    options = DeployOptions(
        command=parse_command("./release.sh --tag 'v 2'"), expected_tasks=frozenset({"t"})
    )
    result = DeployMachine(fleet, broker(fleet), records, options, timing=clock.timing(), run=run).run()
    assert result.status == "done" and result.exit_code == 0, result.message
    assert ran == [(["./release.sh", "--tag", "v 2"], [])]  # ran only once every worker was down
    assert result.stopped == ("w1@h", "w2@h") and result.new_workers == ("w1@h", "w2@h")
    assert result.drain is not None and result.drain.status == "drained"
    assert records.load() == []


def test_failing_deploy_command_is_exit_1_and_says_the_old_workers_are_stopped():
    clock = FakeClock()
    fleet = fleet_of(clock)

    def run(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 2, "", "image not found")

    result = DeployMachine(
        fleet,
        broker(fleet),
        MemoryRecordStore(),
        DeployOptions(command=("deploy",)),
        timing=clock.timing(),
        run=run,
    ).run()
    assert result.status == "failed" and result.exit_code == 1
    assert "exited 2 (image not found)" in result.message and "old workers are stopped" in result.message


def test_drain_timeout_deploys_nothing_and_new_workers_missing_is_timeout():
    clock = FakeClock()
    fleet = fleet_of(clock)
    fleet.workers["w1@h"].tasks = [("long", "active", None)]
    result = DeployMachine(
        fleet,
        broker(fleet),
        MemoryRecordStore(),
        DeployOptions(command=("x",), drain_timeout=1.0),
        timing=clock.timing(),
        run=lambda *a, **k: None,
    ).run()
    assert result.status == "timeout" and "nothing was deployed" in result.message
    assert fleet.workers["w1@h"].queues == ["celery"]

    clock2 = FakeClock()
    fleet2 = fleet_of(clock2)
    result = DeployMachine(
        fleet2,
        broker(fleet2),
        MemoryRecordStore(),
        DeployOptions(command=("x",), wait_timeout=3),
        timing=clock2.timing(),
        run=lambda argv, **k: subprocess.CompletedProcess(argv, 0, "", ""),
    ).run()
    assert result.status == "timeout" and "only 0 of 2 worker(s)" in result.message
