"""The drain machine, step by step, on a fake clock and a simulated fleet."""

from __future__ import annotations

import pytest

from deploykit.brokers.records import ConsumerRecord, MemoryRecordStore
from deploykit.orchestrate.drain import DrainMachine, DrainOptions, DrainState
from deploykit.orchestrate.resume import resume
from tests.orchestrate.sim import FakeClock, SimFleet, SimWorker, broker


def fleet_of(clock: FakeClock, **workers: SimWorker) -> SimFleet:
    return SimFleet(clock, {f"{name}@h": w for name, w in workers.items()})


def test_drain_steps_cancel_before_record_and_finishes_when_work_done():
    clock = FakeClock()
    fleet = fleet_of(
        clock,
        w1=SimWorker(
            ["celery", "emails"], [("a", "active", clock.t + 1.0), ("b", "reserved", clock.t + 2.0)]
        ),
        w2=SimWorker(["celery"]),
    )
    records = MemoryRecordStore()
    machine = DrainMachine(fleet, broker(), records, DrainOptions(workers=("w1",)), timing=clock.timing())

    assert machine.step() is DrainState.BUDGET
    assert machine.selected == ["w1@h"]
    assert machine.step() is DrainState.CANCEL
    assert machine.step() is DrainState.CONFIRM
    # the record was written before the first cancel_consumer was sent
    assert records.log[0] == ("add", (("w1@h", "celery"), ("w1@h", "emails")))
    first_cancel = next(i for i, (c, _) in enumerate(fleet.calls) if c == "cancel_consumer")
    assert first_cancel > 0
    assert fleet.workers["w1@h"].queues == []
    assert fleet.workers["w2@h"].queues == ["celery"]
    assert machine.step() is DrainState.WAIT
    assert machine.step() is DrainState.WAIT  # still holding 2 tasks
    assert machine.remaining.active == 1 and machine.remaining.reserved == 1

    result = machine.run()
    assert result.status == "drained" and result.exit_code == 0
    # reacts within one tick of the last task finishing (at +2.0 s)
    assert 2.0 <= result.elapsed <= 2.0 + 0.2 + 1e-9
    assert [(c.worker, c.queue) for c in result.cancelled] == [("w1@h", "celery"), ("w1@h", "emails")]
    assert len(records.load()) == 2  # workers stay quiet: the record is what resume undoes


def test_timeout_leaves_workers_quiet_and_rollback_on_timeout_readds():
    for rollback in (False, True):
        clock = FakeClock()
        fleet = fleet_of(clock, w1=SimWorker(["celery"], [("a", "active", None)]))
        records = MemoryRecordStore()
        options = DrainOptions(timeout=3.0, rollback_on_timeout=rollback)
        result = DrainMachine(fleet, broker(), records, options, timing=clock.timing()).run()
        assert result.status == "timeout" and result.exit_code == 3
        assert result.remaining.active == 1
        assert 3.0 <= result.elapsed < 3.3
        if rollback:
            assert fleet.workers["w1@h"].queues == ["celery"]
            assert records.load() == [] and result.rolled_back
        else:
            assert fleet.workers["w1@h"].queues == []
            assert [r.queue for r in records.load()] == ["celery"]


def test_min_consumers_refuses_with_nothing_changed():
    clock = FakeClock()
    fleet = fleet_of(clock, w1=SimWorker(["celery", "emails"]), w2=SimWorker(["celery"]))
    records = MemoryRecordStore()
    options = DrainOptions(workers=("w1",), min_consumers=1)
    result = DrainMachine(fleet, broker(), records, options, timing=clock.timing()).run()
    assert result.status == "refused" and result.exit_code == 4
    assert "emails (1 → 0)" in result.message and "celery" not in result.message.split("queue(s)")[1]
    assert fleet.commands("cancel_consumer") == [] and records.log == []
    assert fleet.workers["w1@h"].queues == ["celery", "emails"]
    # the same budget allows draining w1 from celery alone
    ok = DrainMachine(
        fleet,
        broker(),
        records,
        DrainOptions(workers=("w1",), queues=("celery",), min_consumers=1),
        timing=clock.timing(),
    ).run()
    assert ok.status == "drained" and fleet.workers["w1@h"].queues == ["emails"]


def test_a_worker_that_does_not_ack_cancel_fails_and_everything_is_put_back():
    clock = FakeClock()
    fleet = fleet_of(clock, w1=SimWorker(["celery"]), w2=SimWorker(["celery"], deaf_to_cancel=True))
    records = MemoryRecordStore()
    result = DrainMachine(fleet, broker(), records, DrainOptions(), timing=clock.timing()).run()
    assert result.status == "failed" and result.exit_code == 1
    assert "celery on w2@h" in result.message
    assert fleet.workers["w1@h"].queues == ["celery"] and fleet.workers["w2@h"].queues == ["celery"]
    assert records.load() == [] and result.rolled_back


def test_interrupt_during_wait_readds_every_cancelled_consumer():
    clock = FakeClock()
    fleet = fleet_of(clock, w1=SimWorker(["celery", "emails"], [("a", "active", None)]))
    records = MemoryRecordStore()

    start = clock.t

    def ctrl_c(t: float) -> None:
        if t > start + 1.0:
            raise KeyboardInterrupt

    clock.hooks.append(ctrl_c)
    machine = DrainMachine(fleet, broker(), records, DrainOptions(), timing=clock.timing())
    result = machine.run()
    assert result.status == "interrupted" and result.exit_code == 130
    assert sorted(fleet.workers["w1@h"].queues) == ["celery", "emails"]
    assert records.load() == []
    readded = [args[0]["queue"] for args in fleet.commands("add_consumer")]
    assert sorted(readded) == ["celery", "emails"]
    # re-added with the exchange/routing key the worker reported
    assert fleet.commands("add_consumer")[0][0]["exchange_type"] == "direct"


def test_no_selected_worker_is_unavailable_69():
    clock = FakeClock()
    fleet = fleet_of(clock, w1=SimWorker(["celery"]))
    result = DrainMachine(
        fleet, broker(), MemoryRecordStore(), DrainOptions(workers=("nope*",)), timing=clock.timing()
    ).run()
    assert result.status == "unavailable" and result.exit_code == 69


def test_wait_eta_waits_for_held_eta_tasks_and_lists_them_otherwise():
    clock = FakeClock()
    w = SimWorker(["celery"], [("e1", "scheduled", clock.t + 1.5)])
    fleet = fleet_of(clock, w1=w)
    quick = DrainMachine(fleet, broker(), MemoryRecordStore(), DrainOptions(), timing=clock.timing()).run()
    assert quick.status == "drained" and [t.id for t in quick.held_eta] == ["e1"]
    assert "restore_unacked_once" in quick.eta_fate

    clock2 = FakeClock()
    fleet2 = fleet_of(clock2, w1=SimWorker(["celery"], [("e1", "scheduled", clock2.t + 1.5)]))
    waited = DrainMachine(
        fleet2,
        broker(kind="rabbitmq"),
        MemoryRecordStore(),
        DrainOptions(wait_eta=True),
        timing=clock2.timing(),
    ).run()
    assert waited.status == "drained" and waited.elapsed >= 1.5
    assert "channel closes" in waited.eta_fate


def test_worker_killed_while_draining_is_a_clear_failure():
    clock = FakeClock()
    fleet = fleet_of(clock, w1=SimWorker(["celery"], [("a", "active", None)]), w2=SimWorker(["celery"]))

    start = clock.t

    def kill(t: float) -> None:
        if t > start + 1.0:
            fleet.workers["w1@h"].alive = False

    clock.hooks.append(kill)
    result = DrainMachine(
        fleet, broker(), MemoryRecordStore(), DrainOptions(workers=("w1",), timeout=10), timing=clock.timing()
    ).run()
    assert result.status == "failed" and result.exit_code == 1
    assert result.lost_workers == ("w1@h",)
    assert "stopped answering" in result.message


def test_worker_killed_between_cancel_and_confirmation_is_lost_not_unconfirmed():
    """The kill lands after cancel_consumer but before the drain's confirming active_queues."""
    clock = FakeClock()
    fleet = fleet_of(clock, w1=SimWorker(["celery"], [("a", "active", None)]))
    original = fleet.control

    def cancel_then_die(command, arguments, destination, *, reply=True):
        answers = original(command, arguments, destination, reply=reply)
        if command == "cancel_consumer":
            fleet.workers["w1@h"].alive = False
        return answers

    fleet.control = cancel_then_die  # type: ignore[method-assign]
    result = DrainMachine(
        fleet, broker(), MemoryRecordStore(), DrainOptions(timeout=30), timing=clock.timing()
    ).run()
    assert result.status == "failed" and result.exit_code == 1
    assert result.lost_workers == ("w1@h",)
    assert "stopped answering" in result.message
    assert "not confirmed" not in result.message


def test_until_empty_cancels_nothing_and_waits_for_the_broker():
    from deploykit.brokers.base import QueueStats

    clock = FakeClock()
    fleet = fleet_of(clock, w1=SimWorker(["celery"], [("a", "active", clock.t + 0.5)]))
    fake = broker(stats=[QueueStats("celery", ready=3, unacked=0)])

    start = clock.t

    def consume(t: float) -> None:
        if t > start + 1.0:
            fake.stats["celery"] = QueueStats("celery", ready=0, unacked=0)

    clock.hooks.append(consume)
    result = DrainMachine(
        fleet, fake, MemoryRecordStore(), DrainOptions(until_empty=True), timing=clock.timing()
    ).run()
    assert result.status == "drained" and result.mode == "until-empty"
    assert fleet.commands("cancel_consumer") == []
    assert 1.0 <= result.elapsed < 1.5


def test_resume_restores_exactly_what_was_recorded():
    clock = FakeClock()
    fleet = fleet_of(clock, w1=SimWorker(["celery"]), w2=SimWorker([]), w3=SimWorker([]))
    spec = {
        "name": "emails",
        "exchange": {"name": "mail-x", "type": "topic"},
        "routing_key": "mail.#",
        "queue_arguments": {"x-queue-type": "quorum"},
    }
    records = MemoryRecordStore(
        [
            ConsumerRecord("w1@h", "emails", spec, "d1", 1.0),
            ConsumerRecord("w2@h", "celery", {"name": "celery"}, "d1", 1.0),
            ConsumerRecord("gone@h", "celery", {"name": "celery"}, "d1", 1.0),
        ]
    )
    result = resume(fleet, records, ("w1", "gone"), timing=clock.timing())
    assert [(r.worker, r.queue) for r in result.restored] == [("w1@h", "emails")]
    assert [(r.worker, r.queue) for r in result.not_restored] == [("gone@h", "celery")]
    assert result.exit_code == 69
    add = fleet.commands("add_consumer")
    assert add == [
        (
            {
                "queue": "emails",
                "exchange": "mail-x",
                "exchange_type": "topic",
                "routing_key": "mail.#",
                "queue_arguments": {"x-queue-type": "quorum"},
            },
            ["w1@h"],
        )
    ]
    assert fleet.workers["w2@h"].queues == []  # not selected: untouched
    assert sorted(r.key for r in records.load()) == [("gone@h", "celery"), ("w2@h", "celery")]

    everything = resume(fleet, records, (), timing=clock.timing(), forget_missing=True)
    assert everything.exit_code == 0 and records.load() == []
    assert fleet.workers["w2@h"].queues == ["celery"]


@pytest.mark.parametrize(
    "pattern,node,expected",
    [
        ("w1", "w1@host", True),
        ("w1@*", "w1@host", True),
        ("*@host", "w2@host", True),
        ("w1", "w10@host", False),
        ("w[12]", "w2@h", True),
    ],
)
def test_worker_patterns(pattern, node, expected):
    from deploykit.orchestrate.common import matches

    assert matches(node, (pattern,)) is expected


def test_draining_one_queue_waits_only_for_that_queues_work():
    clock = FakeClock()
    w1 = SimWorker(["emails", "celery"])
    fleet = fleet_of(clock, w1=w1)
    original = fleet._reply
    ends = clock.t + 1.0

    def reply(node, command):
        if command != "active":
            return original(node, command)
        running = [{"id": "c", "type": "t", "delivery_info": {"exchange": "celery", "routing_key": "celery"}}]
        if clock.t < ends:  # an 'emails' task until +1 s; the 'celery' one never ends
            running.append(
                {"id": "e", "type": "t", "delivery_info": {"exchange": "emails", "routing_key": "emails"}}
            )
        return running

    fleet._reply = reply
    result = DrainMachine(
        fleet,
        broker(),
        MemoryRecordStore(),
        DrainOptions(queues=("emails",), timeout=5),
        timing=clock.timing(),
    ).run()
    assert result.status == "drained", result.message
    assert 1.0 <= result.elapsed < 1.5
    assert w1.queues == ["celery"]


def test_a_broker_outage_while_waiting_is_ridden_out_then_gives_up_with_69():
    from deploykit.errors import Unavailable

    clock = FakeClock()
    fleet = fleet_of(clock, w1=SimWorker(["celery"], [("a", "active", clock.t + 8.0)]))
    down = {"from": clock.t + 1.0, "until": clock.t + 5.0}
    gather = fleet.gather

    def flaky(commands, destination):
        if down["from"] <= clock.t < down["until"]:
            raise Unavailable("cannot reach broker redis://…: Connection refused")
        return gather(commands, destination)

    fleet.gather = flaky
    records = MemoryRecordStore()
    result = DrainMachine(fleet, broker(), records, DrainOptions(timeout=30), timing=clock.timing()).run()
    assert result.status == "drained" and 8.0 <= result.elapsed < 8.5
    assert any("lost the broker" in note for note in result.notes)

    clock2 = FakeClock()
    fleet2 = fleet_of(clock2, w1=SimWorker(["celery"], [("a", "active", None)]))
    gather2 = fleet2.gather

    def gone(commands, destination):
        if clock2.t > 1001.0:
            raise Unavailable("cannot reach broker")
        return gather2(commands, destination)

    fleet2.gather = gone
    result = DrainMachine(fleet2, broker(), MemoryRecordStore(), DrainOptions(), timing=clock2.timing()).run()
    assert result.status == "unavailable" and result.exit_code == 69
    assert "run `deploykit resume`" in result.message


def test_until_empty_with_an_incompatibility_counter_waits_for_it_only():
    clock = FakeClock()
    fleet = fleet_of(clock, w1=SimWorker(["celery"], [("a", "active", None)]))
    counts = iter([3, 1, 0])
    asked = []

    def incompatible(queues, workers):
        asked.append((list(queues), list(workers)))
        return next(counts)

    result = DrainMachine(
        fleet,
        broker(),
        MemoryRecordStore(),
        DrainOptions(until_empty=True, queues=("celery",)),
        timing=clock.timing(),
        incompatible=incompatible,
    ).run()
    assert result.status == "drained" and result.mode == "until-compatible"
    assert result.remaining.incompatible == 0
    assert asked == [(["celery"], ["w1@h"])] * 3
    assert clock.sleeps == [1.0, 1.0]  # a scan per second, not per tick
