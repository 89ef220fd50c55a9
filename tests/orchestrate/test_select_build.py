"""Selecting workers by the build they advertise (``--build``), and counting a restarted worker as
back only on the expected build (``--expect-build``), on the simulated fleet."""

from __future__ import annotations

import subprocess

import pytest

from deploykit.brokers.records import MemoryRecordStore
from deploykit.errors import ExitCode, UsageError
from deploykit.orchestrate.common import select_workers, validate_builds
from deploykit.orchestrate.deploy import DeployMachine, DeployOptions
from deploykit.orchestrate.drain import DrainMachine, DrainOptions
from deploykit.orchestrate.restart import RestartMachine, RestartOptions
from deploykit.orchestrate.resume import resume
from deploykit.orchestrate.shutdown import ShutdownMachine, ShutdownOptions
from tests.cli import run_deploykit
from tests.orchestrate.sim import FakeClock, SimFleet, SimWorker, broker
from tests.orchestrate.test_restart import ReviveStarter


def mixed(clock: FakeClock) -> SimFleet:
    """w1, w2 on build A; w3 on build B; w4 advertising no build."""
    return SimFleet(
        clock,
        {
            "w1@h": SimWorker(["celery"], [("t1", "active", clock.t + 0.5)], pid=101, build="A"),
            "w2@h": SimWorker(["celery", "emails"], pid=102, build="A"),
            "w3@h": SimWorker(["celery"], pid=103, build="B"),
            "w4@h": SimWorker(["celery"], pid=104),
        },
    )


def test_select_by_build_intersects_patterns_and_reads_stats_in_one_round_trip():
    clock = FakeClock()
    fleet = mixed(clock)
    online, selected = select_workers(fleet, broker(fleet), (), builds=("A",))
    assert online == ["w1@h", "w2@h", "w3@h", "w4@h"] and selected == ["w1@h", "w2@h"]
    assert fleet.commands("gather") == [(["stats"], ["w1@h", "w2@h", "w3@h", "w4@h"])]
    assert select_workers(fleet, broker(fleet), ("w2",), builds=("A", "B"))[1] == ["w2@h"]
    assert select_workers(fleet, broker(fleet), ("w3", "w1"), builds=("A", "B"))[1] == ["w1@h", "w3@h"]
    # without --build nothing more is asked than before: the ping of discovery
    fleet.calls.clear()
    assert select_workers(fleet, broker(fleet), ("w4",))[1] == ["w4@h"]
    assert fleet.commands("gather") == []


def test_a_build_no_live_worker_runs_is_a_usage_error_naming_the_live_builds():
    clock = FakeClock()
    fleet = mixed(clock)
    with pytest.raises(UsageError) as caught:
        select_workers(fleet, broker(fleet), (), builds=("A", "Z"))
    assert caught.value.exit_code == ExitCode.USAGE
    assert caught.value.message == (
        "no live worker runs build 'Z'; live builds: A (w1@h, w2@h); B (w3@h); no build (w4@h)"
    )


def test_validate_builds_uses_the_registry_rule_and_drops_repeats():
    assert validate_builds(["A", "B", "A"]) == ("A", "B")
    with pytest.raises(UsageError, match=r"invalid --build build id .*no '/'"):
        validate_builds(["a/b"])
    with pytest.raises(UsageError, match="empty"):
        validate_builds([""])


def test_drain_by_build_cancels_only_that_builds_consumers_and_resume_by_build_restores_them():
    clock = FakeClock()
    fleet = mixed(clock)
    records = MemoryRecordStore()
    result = DrainMachine(
        fleet, broker(fleet), records, DrainOptions(builds=("A",)), timing=clock.timing()
    ).run()
    assert result.status == "drained", result.message
    assert result.workers == ("w1@h", "w2@h")
    assert {(c.worker, c.queue) for c in result.cancelled} == {
        ("w1@h", "celery"),
        ("w2@h", "celery"),
        ("w2@h", "emails"),
    }
    assert fleet.workers["w1@h"].queues == [] and fleet.workers["w2@h"].queues == []
    assert fleet.workers["w3@h"].queues == ["celery"] and fleet.workers["w4@h"].queues == ["celery"]

    # drain B too, then resume only B: A's entries stay in the record
    DrainMachine(fleet, broker(fleet), records, DrainOptions(builds=("B",)), timing=clock.timing()).run()
    assert fleet.workers["w3@h"].queues == []
    back = resume(fleet, records, builds=("B",), broker=broker(fleet), timing=clock.timing())
    assert back.status == "resumed" and [(r.worker, r.queue) for r in back.restored] == [("w3@h", "celery")]
    assert fleet.workers["w3@h"].queues == ["celery"] and fleet.workers["w1@h"].queues == []
    assert {r.worker for r in records.load()} == {"w1@h", "w2@h"}
    nothing = resume(fleet, records, builds=("B",), broker=broker(fleet), timing=clock.timing())
    assert nothing.status == "nothing-to-do" and "build B" in nothing.message
    back = resume(fleet, records, ("w2",), builds=("A",), broker=broker(fleet), timing=clock.timing())
    assert {(r.worker, r.queue) for r in back.restored} == {("w2@h", "celery"), ("w2@h", "emails")}
    assert [r.worker for r in records.load()] == ["w1@h"]


def test_drain_of_a_dead_build_changes_nothing():
    clock = FakeClock()
    fleet = mixed(clock)
    records = MemoryRecordStore()
    machine = DrainMachine(
        fleet, broker(fleet), records, DrainOptions(builds=("old",)), timing=clock.timing()
    )
    with pytest.raises(UsageError, match="no live worker runs build 'old'; live builds: A"):
        machine.run()
    assert fleet.commands("cancel_consumer") == [] and records.log == []


def test_drain_by_build_and_pattern_with_no_worker_in_both_is_unavailable():
    clock = FakeClock()
    fleet = mixed(clock)
    options = DrainOptions(workers=("w3",), builds=("A",))
    result = DrainMachine(fleet, broker(fleet), MemoryRecordStore(), options, timing=clock.timing()).run()
    assert result.status == "unavailable" and result.exit_code == 69
    assert "w3 on build A" in result.message
    assert fleet.commands("cancel_consumer") == []


def test_shutdown_by_build_stops_only_that_build():
    clock = FakeClock()
    fleet = mixed(clock)
    options = ShutdownOptions(builds=("B",), timeout=10.0)
    result = ShutdownMachine(fleet, broker(fleet), options, timing=clock.timing()).run()
    assert result.status == "done", result.message
    assert [w.worker for w in result.workers] == ["w3@h"]
    assert [n for n, w in fleet.workers.items() if not w.alive] == ["w3@h"]


class BuildStarter(ReviveStarter):
    """Starts a worker again on ``build`` (the release it was deployed with)."""

    def __init__(self, fleet: SimFleet, build: str | None) -> None:
        super().__init__(fleet)
        self.build = build

    def start(self, worker):  # type: ignore[no-untyped-def]
        super().start(worker)
        self.fleet.workers[worker.nodename].build = self.build


def test_restart_by_build_expecting_the_new_build():
    clock = FakeClock()
    fleet = mixed(clock)
    starter = BuildStarter(fleet, "B")
    options = RestartOptions(builds=("A",), expected_build="B", start_timeout=10.0)
    result = RestartMachine(
        fleet, broker(fleet), MemoryRecordStore(), starter, options, timing=clock.timing()
    ).run()
    assert result.status == "done", result.message
    assert result.restarted == ("w1@h", "w2@h") and starter.started == ["w1@h", "w2@h"]
    assert {n: w.build for n, w in fleet.workers.items()} == {
        "w1@h": "B",
        "w2@h": "B",
        "w3@h": "B",
        "w4@h": None,
    }
    assert fleet.workers["w3@h"].pid == 103  # never touched


@pytest.mark.parametrize(
    ("came_back_on", "why"),
    [("A", "it runs build 'A', expected 'B'"), (None, "it advertises no build (expected 'B'")],
)
def test_a_worker_that_comes_back_on_the_old_build_is_not_back(came_back_on, why):
    clock = FakeClock()
    fleet = mixed(clock)
    options = RestartOptions(builds=("A",), expected_build="B", start_timeout=10.0)
    result = RestartMachine(
        fleet,
        broker(fleet),
        MemoryRecordStore(),
        BuildStarter(fleet, came_back_on),
        options,
        timing=clock.timing(),
    ).run()
    assert result.status == "failed" and result.exit_code == 1
    assert "w1@h came back on the wrong build: " + why in result.message
    assert "later batches are untouched" in result.message
    assert result.restarted == () and result.untouched == ("w2@h",)


def test_restart_of_a_dead_build_is_a_usage_error_before_anything_changes():
    clock = FakeClock()
    fleet = mixed(clock)
    starter = BuildStarter(fleet, "B")
    machine = RestartMachine(
        fleet,
        broker(fleet),
        MemoryRecordStore(),
        starter,
        RestartOptions(builds=("C",)),
        timing=clock.timing(),
    )
    with pytest.raises(UsageError, match="live builds: A"):
        machine.run()
    assert starter.started == [] and fleet.commands("cancel_consumer") == []


def deploy_with(fleet: SimFleet, comes_back_on: str | None, **options: object):  # type: ignore[no-untyped-def]
    def run(argv, **kwargs):  # type: ignore[no-untyped-def]
        for w in fleet.workers.values():
            if not w.alive:
                w.alive, w.queues, w.tasks, w.build = True, ["celery"], [], comes_back_on
        return subprocess.CompletedProcess(argv, 0, "", "")

    opts = DeployOptions(command=("./release.sh",), wait_timeout=5.0, **options)  # type: ignore[arg-type]
    clock = fleet.clock
    return DeployMachine(
        fleet, broker(fleet), MemoryRecordStore(), opts, timing=clock.timing(), run=run
    ).run()


def test_deploy_by_build_counts_only_workers_back_on_the_expected_build():
    clock = FakeClock()
    fleet = mixed(clock)
    result = deploy_with(fleet, "B", builds=("A",), expected_build="B")
    assert result.status == "done", result.message
    assert result.stopped == ("w1@h", "w2@h")
    # w3 (already on B) and w4 (no build) were left alone: they are not counted as new workers
    assert result.new_workers == ("w1@h", "w2@h")


def test_deploy_fails_when_a_stopped_worker_comes_back_on_the_old_build():
    clock = FakeClock()
    fleet = mixed(clock)
    result = deploy_with(fleet, "A", builds=("A",), expected_build="B")
    assert result.status == "failed" and result.exit_code == 1
    assert result.message == (
        "w1@h came back on the wrong build: it runs build 'A', expected 'B'; it is not counted as back"
    )


def test_deploy_without_build_selection_times_out_naming_workers_on_other_builds():
    clock = FakeClock()
    fleet = SimFleet(clock, {"w1@h": SimWorker(["celery"], build="A")})
    fleet.workers["w9@h"] = SimWorker(["celery"], build="A", alive=False)

    def run(argv, **kwargs):  # type: ignore[no-untyped-def]
        fleet.workers["w9@h"].alive = True  # a worker this deploy did not stop, on the old build
        return subprocess.CompletedProcess(argv, 0, "", "")

    opts = DeployOptions(command=("./release.sh",), wait_timeout=3.0, expected_build="B")
    result = DeployMachine(
        fleet, broker(fleet), MemoryRecordStore(), opts, timing=clock.timing(), run=run
    ).run()
    assert result.status == "timeout", result.message
    assert "only 0 of 1 worker(s) answer on build 'B'" in result.message
    assert "(w9@h run other builds)" in result.message


@pytest.mark.parametrize(
    "args",
    [
        ["drain", "--build", "a/b"],
        ["resume", "--build", ""],
        ["shutdown", "--build", "x\ty"],
        ["probe", "--build", "a/b"],
        ["restart", "--exec", "true", "--expect-build", "a/b"],
        ["deploy", "--run", "true", "--build", "A", "--expect-build", ".."],
    ],
)
def test_cli_refuses_an_invalid_build_id_in_one_line_before_connecting(args):
    done = run_deploykit(*args, "-b", "redis://127.0.0.1:1/0")
    assert done.returncode == 2, done.stderr
    assert "build id" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# -- probe ------------------------------------------------------------------------------------
def test_probe_by_build_probes_only_the_queues_that_build_consumes():
    from deploykit.inspection import collect_queues
    from deploykit.probe.core import consumers_of, for_builds, select_queues

    clock = FakeClock()
    fleet = mixed(clock)
    fake = broker(fleet)
    view = consumers_of(fleet, fake, builds=("B",))
    assert fleet.commands("gather") == [(["active_queues", "stats"], ["w1@h", "w2@h", "w3@h", "w4@h"])]
    assert {w.hostname: w.build for w in view.workers} == {
        "w1@h": "A",
        "w2@h": "A",
        "w3@h": "B",
        "w4@h": None,
    }
    rows = for_builds(collect_queues(fake, view).queues, view.workers, ("B",))
    by_name = {r.name: r for r in rows}
    assert by_name["celery"].consumers == 1 and by_name["celery"].consumer_workers == ("w3@h",)
    assert by_name["emails"].consumers == 0
    probed, unserved = select_queues(rows, [])
    assert [r.name for r in probed] == ["celery"] and unserved == []
    probed, unserved = select_queues(rows, ["emails"])
    assert probed == [] and [u.status for u in unserved] == ["no-consumers"]
    with pytest.raises(UsageError, match="no live worker runs build 'C'"):
        consumers_of(fleet, fake, builds=("C",))


def test_a_probe_that_ran_on_another_build_is_said():
    from deploykit.probe.core import ProbeReport, ProbeResult, consumers_of, judged_for_builds

    clock = FakeClock()
    fleet = mixed(clock)
    workers = consumers_of(fleet, broker(fleet), builds=("B",)).workers
    report = ProbeReport(
        (
            ProbeResult("celery", "processed", worker="w1@h", latency=0.1),
            ProbeResult("fast", "processed", worker="w3@h", latency=0.1),
            ProbeResult("emails", "no-consumers", detail="no worker consumes it"),
        ),
        "events",
        5.0,
        0.2,
    )
    judged = judged_for_builds(report, workers, ("B",))
    assert judged.notes == (
        "the probe of celery ran on w1@h (build A), not on build B: workers of other builds consume it too",
    )
    assert judged.results[2].detail == "no worker on build B consumes it"
    assert [r.status for r in judged.results] == ["processed", "processed", "no-consumers"]
