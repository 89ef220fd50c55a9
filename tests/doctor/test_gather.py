"""Gathering an Audit from fake workers and a fake broker: per-worker settings, queue declarations,
and how long each waiting ETA task stays unacknowledged."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from deploykit.brokers.base import BrokerSettings, QueueStats, RawMessage
from deploykit.doctor.checks import run_checks
from deploykit.doctor.gather import gather_audit
from deploykit.messages import StoredHeaders
from tests.fakes import FakeBroker, FakeFleet

NOW = datetime(2026, 11, 21, 5, 0, tzinfo=timezone.utc)


def _queue(
    name: str, exchange_type: str = "direct", arguments: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "exchange": {"name": name, "type": exchange_type},
        "routing_key": name,
        "queue_arguments": arguments,
    }


def _scheduled(task_id: str, eta: datetime) -> dict[str, Any]:
    request = {
        "id": task_id,
        "type": "proj.remind",
        "delivery_info": {"exchange": "celery", "routing_key": "celery"},
    }
    return {"eta": eta.isoformat(), "priority": 6, "request": request}


def test_gather_from_workers_and_broker() -> None:
    eta = NOW + timedelta(hours=2)
    worker_replies = {
        "w1@h": {
            "conf": {"task_acks_late": True, "broker_transport_options": {"visibility_timeout": 600}},
            "registered": ["proj.remind [acks_late=True time_limit=30]"],
            "active_queues": [_queue("celery")],
            "scheduled": [_scheduled("t1", eta)],
            "stats": {},
        },
        "w2@h": {"registered": [], "active_queues": [], "scheduled": [], "stats": {}},  # no conf reply
    }
    delivered = (NOW - timedelta(minutes=10)).timestamp()
    unacked = RawMessage(
        location="unacked",
        queue="celery",
        headers=StoredHeaders(id="t1", task="proj.remind", eta=eta.isoformat()),
        body="",
        body_encoding=None,
        content_type="application/json",
        content_encoding="utf-8",
        size=10,
        delivered_at=delivered,
    )
    broker = FakeBroker(
        [QueueStats("celery", ready=0, unacked=1)],
        mailboxes=["w1@h", "w2@h"],
        unacked=[unacked],
        settings=BrokerSettings(visibility_timeout=3600),
    )
    audit = gather_audit(
        app_source=None,
        broker=broker,
        fleet=FakeFleet(worker_replies),
        broker_url="redis://localhost/0",
        management_url=None,
        now=NOW,
    )
    assert audit.broker_kind == "redis"
    assert [w.origin for w in audit.workers] == ["worker w1@h"]
    assert audit.workers_without_conf == ("w2@h",)
    assert any("w2@h" in note for note in audit.notes)
    (worker,) = audit.workers
    assert worker.transport_options == {"visibility_timeout": 600}
    assert worker.tasks[0].time_limit == 30.0
    assert [(d.name, d.exchange_type, d.origin) for d in audit.queue_defs] == [
        ("celery", "direct", "worker w1@h")
    ]
    (wait,) = audit.etas
    # Held from its delivery 10 minutes ago until due in 2 hours.
    assert wait.id == "t1" and wait.worker == "w1@h" and wait.held_for == 7800.0
    ids = {f.rule for f in run_checks(audit)}
    assert {"VISIBILITY_TIMEOUT_BELOW_ETA", "ACKS_LATE_WITHOUT_REJECT"} <= ids


def test_worker_queue_declarations_keep_each_mapping_and_drop_what_is_not_one() -> None:
    """The same reading of ``active_queues`` as the fleet's parser: a malformed reply or entry is
    no declaration (not a crash); an entry without an exchange keeps its name."""
    from deploykit.doctor.gather import queue_defs_from_worker

    reply = [_queue("celery", "topic", {"x-queue-type": "quorum"}), "junk", 3, {"name": "bare"}]
    defs = queue_defs_from_worker("w1@h", reply)
    assert [(d.name, d.exchange, d.exchange_type, d.origin) for d in defs] == [
        ("celery", "celery", "topic", "worker w1@h"),
        ("bare", None, None, "worker w1@h"),
    ]
    assert defs[0].queue_type == "quorum"
    assert queue_defs_from_worker("w1@h", {"error": "no such command"}) == []
    assert queue_defs_from_worker("w1@h", None) == []
