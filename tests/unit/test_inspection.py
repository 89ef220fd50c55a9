"""The inspection core against fake brokers and fleets."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from deploykit.brokers.base import BrokerSettings, DelayedStore, QueueStats, RawMessage
from deploykit.fleet.replies import WORKER_COMMANDS
from deploykit.inspection import (
    collect_fleet,
    collect_queues,
    collect_scheduled,
    collect_status,
    discover,
)
from deploykit.messages import StoredHeaders
from tests.fakes import FakeBroker, FakeFleet

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=timezone.utc)


def _queue(name: str, exchange: str = "", rk: str | None = None) -> dict:
    return {"name": name, "exchange": {"name": exchange or name}, "routing_key": rk or name}


def _request(task_id: str, name: str, rk: str = "celery", exchange: str = "celery", args=(1, 2)) -> dict:
    return {
        "id": task_id,
        "name": name,
        "type": name,
        "args": list(args),
        "kwargs": {},
        "delivery_info": {"exchange": exchange, "routing_key": rk, "priority": 0, "redelivered": False},
        "acknowledged": False,
    }


def worker_replies(
    *, queues=("celery",), active=(), reserved=(), scheduled=(), pid=100, version="5.7.0"
) -> dict:
    return {
        "ping": {"ok": "pong"},
        "stats": {
            "pid": pid,
            "uptime": 3725,
            "prefetch_count": 4,
            "pool": {"implementation": "celery.concurrency.prefork:TaskPool", "max-concurrency": 2},
        },
        "active_queues": [_queue(q) for q in queues],
        "active": list(active),
        "reserved": list(reserved),
        "scheduled": [{"eta": eta.isoformat(), "priority": 6, "request": req} for eta, req in scheduled],
        "report": {"ok": f"software -> celery:{version} (recovery) kombu:5.7.0 py:3.11.7\n"},
    }


def test_discovery_pings_exactly_the_mailboxes_the_broker_lists():
    fleet = FakeFleet({"w1@h": worker_replies(), "w2@h": worker_replies()}, silent=["w2@h"])
    broker = FakeBroker(mailboxes=["w2@h", "w1@h", "w1@h"])
    found = discover(fleet, broker)
    assert found.nodes == ("w1@h",)
    assert found.method == "broker-mailboxes"
    assert found.silent == ("w2@h",)
    assert fleet.calls == [("ping", ["w1@h", "w2@h"])]


def test_discovery_falls_back_to_broadcast_when_the_broker_cannot_tell():
    fleet = FakeFleet({"w1@h": worker_replies()})
    found = discover(fleet, FakeBroker(mailboxes=None))
    assert found.nodes == ("w1@h",) and found.method == "broadcast"
    assert fleet.calls == [("ping", None)]


def test_no_mailbox_means_no_worker_without_any_ping():
    fleet = FakeFleet({})
    assert discover(fleet, FakeBroker(mailboxes=[])).nodes == ()
    assert fleet.calls == []


def test_workers_asked_everything_in_one_gather_and_counted():
    eta = NOW + timedelta(minutes=5)
    fleet = FakeFleet(
        {
            "w1@h": worker_replies(
                queues=("celery", "emails"),
                active=[_request("a1", "tasks.sleep")],
                reserved=[_request("r1", "tasks.add"), _request("r2", "tasks.add")],
                scheduled=[(eta, _request("e1", "tasks.add"))],
            ),
        }
    )
    view = collect_fleet(fleet, FakeBroker(mailboxes=["w1@h"]))
    assert [c[0] for c in fleet.calls] == ["ping", "gather"]
    assert fleet.calls[1][1] == (sorted(WORKER_COMMANDS), ["w1@h"])
    (w,) = view.workers
    assert (w.hostname, w.pid, w.pool, w.concurrency, w.prefetch_count) == ("w1@h", 100, "prefork", 2, 4)
    assert w.queues == ("celery", "emails")
    assert (w.active, w.reserved, w.scheduled) == (1, 2, 1)
    assert w.uptime == 3725 and w.celery_version == "5.7.0"
    assert {t.state for t in w.tasks} == {"active", "reserved", "scheduled"}
    assert not w.partial


def test_worker_missing_some_replies_is_partial_with_unknown_counts():
    replies = worker_replies()
    del replies["scheduled"]
    view = collect_fleet(FakeFleet({"w1@h": replies}), FakeBroker(mailboxes=["w1@h"]))
    (w,) = view.workers
    assert w.partial and w.scheduled is None and w.active == 0


def test_queues_merge_broker_counts_and_worker_consumers():
    eta = NOW + timedelta(minutes=5)
    fleet = FakeFleet(
        {
            "w1@h": worker_replies(queues=("celery", "emails"), scheduled=[(eta, _request("e1", "t.add"))]),
            "w2@h": worker_replies(queues=("celery",)),
        }
    )
    broker = FakeBroker(
        [
            QueueStats("celery", ready=5, unacked=3, unacked_eta=None, consumers=None),
            QueueStats("emails", ready=0, unacked=0, unacked_eta=0),
            QueueStats("reports", ready=7, unacked=0, unacked_eta=0),
        ],
        known=["reports", "w1@h.celery.pidbox", "celery_delayed_3"],
        mailboxes=["w1@h", "w2@h"],
    )
    fleet_view = collect_fleet(fleet, broker)
    view = collect_queues(broker, fleet_view, app_queues=["celery", "billing"])
    rows = {r.name: r for r in view.queues}
    assert sorted(rows) == ["billing", "celery", "emails", "reports"]
    assert broker.asked[-1] == ["billing", "celery", "emails", "reports"]
    celery = rows["celery"]
    assert (celery.ready, celery.unacked, celery.eta_held) == (5, 3, 1)
    assert (celery.consumers, celery.consumers_source) == (2, "workers")
    assert celery.consumer_workers == ("w1@h", "w2@h")
    assert celery.listed_by == ("app", "workers")
    assert rows["reports"].consumers == 0 and rows["reports"].listed_by == ("broker",)
    assert not rows["billing"].exists
    # The broker's own ETA count wins over what workers report (it also sees orphans).
    assert rows["emails"].eta_held == 0


def test_unknown_stays_unknown_not_zero():
    broker = FakeBroker([QueueStats("celery", ready=2, unacked=None, consumers=1)], known=["celery"])
    view = collect_queues(broker, None)
    (row,) = view.queues
    assert row.unacked is None and row.eta_held is None and row.consumers == 1


def _unacked(task_id: str, eta: datetime | None, delivered: datetime, queue="celery") -> RawMessage:
    return RawMessage(
        location="unacked",
        queue=queue,
        headers=StoredHeaders(
            id=task_id,
            task="t.add",
            eta=eta.isoformat() if eta else None,
            argsrepr="(1, 2)",
            kwargsrepr="{}",
        ),
        body="",
        body_encoding="base64",
        content_type="application/json",
        content_encoding="utf-8",
        size=100,
        delivery_tag=task_id,
        delivered_at=delivered.timestamp(),
    )


def test_scheduled_sorted_with_visibility_hazard_and_orphans():
    soon, late = NOW + timedelta(minutes=2), NOW + timedelta(hours=3)
    fleet = FakeFleet(
        {
            "w1@h": worker_replies(
                scheduled=[(late, _request("late", "t.add")), (soon, _request("soon", "t.add"))]
            )
        }
    )
    broker = FakeBroker(
        mailboxes=["w1@h"],
        unacked=[
            _unacked("late", late, NOW),
            _unacked("soon", soon, NOW),
            _unacked("orphan", NOW + timedelta(minutes=30), NOW - timedelta(minutes=10)),
            _unacked("plain", None, NOW),
        ],
        settings=BrokerSettings(visibility_timeout=3600),
    )
    fleet_view = collect_fleet(fleet, broker)
    view = collect_scheduled(broker, fleet_view, NOW)
    assert [e.id for e in view.entries] == ["soon", "orphan", "late"]
    by_id = {e.id: e for e in view.entries}
    assert by_id["soon"].hazards == () and by_id["soon"].location == "worker"
    assert [h.code for h in by_id["late"].hazards] == ["ETA_BEYOND_VISIBILITY_TIMEOUT"]
    assert by_id["orphan"].location == "broker-unacked"
    assert [h.code for h in by_id["orphan"].hazards] == ["ORPHANED_UNACKED"]
    assert by_id["soon"].seconds_left == 120
    within = collect_scheduled(broker, fleet_view, NOW, within=600)
    assert [e.id for e in within.entries] == ["soon"]


def test_rabbitmq_consumer_timeout_hazard():
    far = NOW + timedelta(hours=1)
    fleet = FakeFleet({"w1@h": worker_replies(scheduled=[(far, _request("far", "t.add"))])})
    broker = FakeBroker(
        kind="rabbitmq",
        mailboxes=["w1@h"],
        settings=BrokerSettings(consumer_timeout=1800, consumer_timeout_source="default"),
    )
    view = collect_scheduled(broker, collect_fleet(fleet, broker), NOW)
    assert [h.code for h in view.entries[0].hazards] == ["ETA_BEYOND_CONSUMER_TIMEOUT"]


def test_status_verdict_idle_and_busy():
    idle_broker = FakeBroker([QueueStats("celery", ready=0, unacked=0, unacked_eta=0)], mailboxes=["w1@h"])
    idle = collect_status(idle_broker, FakeFleet({"w1@h": worker_replies()}), NOW)
    assert not idle.verdict.busy
    assert idle.verdict.summary.startswith("idle: 1 worker(s)")

    busy_broker = FakeBroker(
        [QueueStats("celery", ready=4, unacked=0, unacked_eta=0)],
        mailboxes=["w1@h"],
        delayed=DelayedStore(queues=("celery_delayed_3",), messages=2),
    )
    busy = collect_status(busy_broker, FakeFleet({"w1@h": worker_replies(active=[_request("a", "t")])}), NOW)
    assert busy.verdict.busy
    assert busy.verdict.counts["ready"] == 4
    assert busy.verdict.counts["active"] == 1
    assert busy.verdict.counts["scheduled"] == 2


def test_status_flags_queue_without_consumer_and_silent_mailbox():
    broker = FakeBroker(
        [QueueStats("reports", ready=3, unacked=0, unacked_eta=0)],
        known=["reports"],
        mailboxes=["w1@h", "gone@h"],
    )
    view = collect_status(broker, FakeFleet({"w1@h": worker_replies()}), NOW)
    codes = sorted(h.code for h in view.hazards)
    assert codes == ["NO_CONSUMER", "SILENT_MAILBOX"]


class _ListingBroker(FakeBroker):
    """A fake Redis whose ready lists can be read (``iter_messages``)."""

    def __init__(self, waiting: dict[str, list[RawMessage]], **kwargs) -> None:
        stats = [QueueStats(name, ready=len(items), unacked=0) for name, items in waiting.items()]
        super().__init__(stats, known=list(waiting), **kwargs)
        self.waiting = waiting

    def iter_messages(self, queue: str, *, batch: int = 1000):
        return iter(self.waiting.get(queue, []))


def test_eta_messages_still_in_a_queue_are_scheduled_entries_once(monkeypatch):
    import deploykit.inspection as inspection

    later = NOW + timedelta(hours=2)
    held = NOW + timedelta(minutes=5)
    fleet = FakeFleet({"w1@h": worker_replies(scheduled=[(held, _request("held", "t.add"))])})
    waiting = {
        # "held" is also still listed (taken between the two reads): it stays one entry, held
        "celery": [_unacked("q1", later, NOW), _unacked("plain", None, NOW), _unacked("held", held, NOW)],
        "emails": [_unacked(f"e{i}", later, NOW, queue="emails") for i in range(4)],
    }
    broker = _ListingBroker(waiting, mailboxes=["w1@h"], settings=BrokerSettings(visibility_timeout=3600))
    status = collect_status(broker, fleet, NOW)
    view = status.scheduled
    assert sorted(e.id for e in view.entries if e.location == "queue") == ["e0", "e1", "e2", "e3", "q1"]
    assert [e.location for e in view.entries if e.id == "held"] == ["worker"]
    assert view.waiting is not None and view.waiting.by_queue == {"celery": 2, "emails": 4}
    assert view.held == 1
    assert status.verdict.counts["scheduled"] == 6 and status.verdict.counts["scheduled_in_queues"] == 5
    assert "6 scheduled (5 still in queues)" in status.verdict.summary
    # a 2 h countdown taken now outlives the 1 h visibility timeout
    assert all(
        [h.code for h in e.hazards] == ["ETA_BEYOND_VISIBILITY_TIMEOUT"]
        for e in view.entries
        if e.location == "queue"
    )

    # past the read limit: counted as unread, said in one note
    monkeypatch.setattr(inspection, "WAITING_READ_LIMIT", 4)
    limited = collect_status(broker, fleet, NOW).scheduled
    assert limited.waiting is not None and limited.waiting.unread == 3
    assert [n for n in limited.notes if "not read" in n] == [
        "3 waiting message(s) not read (past the first 4): ETA ones among them are not counted; "
        "`deploykit scan` reads them all"
    ]
