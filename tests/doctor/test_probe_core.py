"""The probe's decisions and its event bookkeeping, against a fake probe transport and fleet."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from deploykit.errors import UsageError
from deploykit.inspection import QueueRow
from deploykit.probe.core import confirmation_method, probe_queues, select_queues, workers_without_results
from tests.fakes import FakeFleet


def row(name: str, consumers: int | None, workers: tuple[str, ...] = (), exists: bool = True) -> QueueRow:
    return QueueRow(name, 0, 0, 0, consumers, "workers", workers, None, exists, ("workers",))


ROWS = [row("celery", 2, ("w1@h", "w2@h")), row("emails", 1, ("w2@h",)), row("idle", 0)]


class FakeConf:
    def __init__(self, **values: Any) -> None:
        defaults = {"result_backend": None, "result_serializer": "json", "task_ignore_result": False}
        self.__dict__.update({**defaults, **values})


class FakeApp:
    def __init__(self, **conf: Any) -> None:
        self.conf = FakeConf(**conf)


def test_default_selection_is_every_queue_with_consumers() -> None:
    probe, unserved = select_queues(ROWS, [])
    assert [r.name for r in probe] == ["celery", "emails"] and unserved == []


def test_requested_queue_without_consumers_fails_without_sending() -> None:
    probe, unserved = select_queues(ROWS, ["emails", "idle", "ghost"])
    assert [r.name for r in probe] == ["emails"]
    assert [(r.queue, r.status, r.processed) for r in unserved] == [
        ("idle", "no-consumers", False),
        ("ghost", "no-consumers", False),
    ]
    assert unserved[1].detail == "the broker does not know this queue"


@pytest.mark.parametrize(
    ("app", "method"),
    [
        (None, "events"),
        (FakeApp(), "events"),
        (FakeApp(result_backend="redis://h/1"), "result-backend"),
        (FakeApp(result_backend="rpc://"), "events"),
        (FakeApp(result_backend="redis://h/1", result_serializer="pickle"), "events"),
        (FakeApp(result_backend="redis://h/1", task_ignore_result=True), "events"),
    ],
)
def test_confirmation_method(app: Any, method: str) -> None:
    assert confirmation_method(app)[0] == method


def test_forcing_an_unusable_backend_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        confirmation_method(FakeApp(result_backend="rpc://"), "backend")


def test_workers_without_results() -> None:
    confs = {
        "a@h": {"result_backend": "redis://h/1"},
        "b@h": {},
        "c@h": {"result_backend": "redis://h/1", "task_ignore_result": True},
    }
    assert workers_without_results(confs) == ["b@h", "c@h"]


class ScriptedProbe:
    """A :class:`~deploykit.probe.core.Prober` standing in for CeleryProbe: probes sent to
    ``processed`` queues succeed on the first poll."""

    def __init__(self, processed: dict[str, str], clock: list[float]) -> None:
        self.processed = processed
        self.clock = clock
        self.seen: dict[str, dict[str, Any]] = {}
        self.sent: dict[str, str] = {}
        self.forgotten: list[str] = []
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.closed = True

    def send(self, queue: str, task_id: str, expires_in: float) -> float:
        self.sent[task_id] = queue
        return self.clock[0]

    def poll(self, pending: Sequence[str], wait: float) -> None:
        self.clock[0] += wait
        for task_id in pending:
            worker = self.processed.get(self.sent[task_id])
            if worker:
                self.seen[task_id] = {"final": "task-succeeded", "worker": worker, "at": self.clock[0]}

    def forget(self, task_ids: Sequence[str]) -> None:
        self.forgotten.extend(task_ids)


def test_events_enabled_only_where_off_and_switched_back() -> None:
    fleet = FakeFleet({"w1@h": {}, "w2@h": {}})
    replies = {"w1@h": {"ok": "task events enabled"}, "w2@h": {"ok": "task events already enabled"}}
    fleet.control = lambda command, arguments, destination, *, reply=True: (  # type: ignore[method-assign]
        fleet.calls.append((command, list(destination))) or (replies if command == "enable_events" else {})
    )
    clock = [0.0]
    fake = ScriptedProbe({"celery": "w1@h"}, clock)
    report = probe_queues(
        None,
        fleet,
        ROWS,
        lambda method: fake,
        workers=["w1@h", "w2@h"],
        timeout=2.0,
        clock=lambda: clock[0],  # type: ignore[arg-type]
    )
    assert fake.opened and fake.closed
    assert ("enable_events", ["w1@h", "w2@h"]) in fleet.calls
    assert ("disable_events", ["w1@h"]) in fleet.calls  # only the one deploykit switched on
    assert report.events_enabled_on == ("w1@h",)
    by_queue = {r.queue: r for r in report.results}
    assert by_queue["celery"].processed and by_queue["celery"].worker == "w1@h"
    assert by_queue["emails"].status == "timeout" and not report.ok
    assert report.confirmed_via == "events"


def test_backend_mode_forgets_results_and_names_a_single_consumer() -> None:
    fleet = FakeFleet({"w2@h": {"conf": {"result_backend": "redis://h/1"}}})
    clock = [0.0]
    fake = ScriptedProbe({"emails": ""}, clock)
    fake.processed = {}

    def poll(pending: Sequence[str], wait: float) -> None:
        clock[0] += wait
        for task_id in pending:
            fake.seen[task_id] = {"final": "task-succeeded", "worker": None, "at": clock[0]}

    fake.poll = poll  # type: ignore[method-assign]
    report = probe_queues(
        FakeApp(result_backend="redis://h/1"),
        fleet,
        [row("emails", 1, ("w2@h",))],
        lambda method: fake,
        workers=["w2@h"],
        clock=lambda: clock[0],
    )
    assert report.ok and report.confirmed_via == "result-backend"
    assert report.results[0].worker == "w2@h"
    assert fake.forgotten == list(fake.sent)
    assert not any(call[0] == "enable_events" for call in fleet.calls)


def test_nothing_to_probe_opens_no_connection() -> None:
    def make_probe(method: str) -> ScriptedProbe:
        raise AssertionError("no queue to probe: no prober wanted")

    report = probe_queues(None, FakeFleet({}), ROWS, make_probe, requested=["idle"], timeout=1.0)
    assert [(r.queue, r.status) for r in report.results] == [("idle", "no-consumers")]
    assert not report.ok


def test_workers_storing_no_results_switch_the_probe_to_events() -> None:
    """The app stores results, the workers run without a backend (drift): ask them, use events."""
    fleet = FakeFleet({"w2@h": {"conf": {"result_backend": None}}})
    clock = [0.0]
    fake = ScriptedProbe({"emails": "w2@h"}, clock)
    methods: list[str] = []

    def make_probe(method: str) -> ScriptedProbe:
        methods.append(method)
        return fake

    report = probe_queues(
        FakeApp(result_backend="redis://h/1"),
        fleet,
        [row("emails", 1, ("w2@h",))],
        make_probe,
        workers=["w2@h"],
        timeout=1.0,
        clock=lambda: clock[0],
    )
    assert methods == ["events"] and report.confirmed_via == "events" and report.ok
    assert report.notes[0] == "confirmed through task events: workers store no results: w2@h"
    assert all(task_id.startswith("deploykit-probe-") for task_id in fake.sent)


def test_consumers_of_asks_the_workers_only_for_their_queues() -> None:
    from deploykit.probe.core import consumers_of
    from tests.fakes import FakeBroker

    fleet = FakeFleet({"w1@h": {"active_queues": [{"name": "celery"}], "stats": {"pid": 1}}})
    view = consumers_of(fleet, FakeBroker(mailboxes=["w1@h"]))
    assert fleet.calls[-1] == ("gather", (["active_queues"], ["w1@h"]))
    (worker,) = view.workers
    assert worker.queues == ("celery",) and worker.pid is None and worker.active is None
