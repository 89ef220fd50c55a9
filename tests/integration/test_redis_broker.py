"""RedisBroker against real ``celery worker`` processes holding reserved and ETA messages."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from celery import Celery

from deploykit.brokers.redis import RedisBroker

pytestmark = pytest.mark.integration


def _client_app(url: str) -> Celery:
    app = Celery("client", broker=url, set_as_current=False)
    app.conf.task_routes = {"tests.apps.basic.send_email": {"queue": "emails"}}
    return app


def _held_by_workers(app: Celery, nodes: list[str]) -> tuple[Counter[str], Counter[str]]:
    """(all held, ETA-held) per queue, as the workers themselves report them."""
    inspect = app.control.inspect(destination=nodes, timeout=3)
    reserved: dict[str, Any] = inspect.reserved() or {}
    scheduled: dict[str, Any] = inspect.scheduled() or {}
    held: Counter[str] = Counter()
    eta: Counter[str] = Counter()
    for tasks in reserved.values():
        for task in tasks:
            held[task["delivery_info"]["routing_key"]] += 1
    for entries in scheduled.values():
        for entry in entries:
            queue = entry["request"]["delivery_info"]["routing_key"]
            held[queue] += 1
            eta[queue] += 1
    return held, eta


def test_unacked_counts_match_what_real_workers_hold(redis_url, start_workers):
    workers = start_workers(redis_url, [("w1@dk-redis", ("celery", "emails")), ("w2@dk-redis", ("celery",))])
    nodes = ["w1@dk-redis", "w2@dk-redis"]
    app = _client_app(redis_url)
    broker = RedisBroker(redis_url, transport_options={}, timeout=1.0)
    try:
        for _ in range(3):
            app.send_task("tests.apps.basic.add", args=(1, 2), queue="celery", countdown=300)
        for _ in range(2):
            app.send_task("tests.apps.basic.send_email", args=("a@b",), queue="emails", countdown=300)
        # w1 is the only consumer of 'emails': one long task keeps it busy, two more wait reserved.
        app.send_task("tests.apps.basic.sleep", args=(12,), queue="emails")
        time.sleep(0.5)
        for _ in range(2):
            app.send_task("tests.apps.basic.send_email", args=("c@d",), queue="emails")

        expected = {"celery": (0, 3, 3), "emails": (0, 4, 2)}  # (ready, unacked, unacked_eta)
        deadline = time.monotonic() + 15
        while True:
            rows = {
                s.name: (s.ready, s.unacked, s.unacked_eta)
                for s in broker.queue_stats(["celery", "emails"]).queues
            }
            if rows == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rows == expected

        held, eta = _held_by_workers(app, nodes)
        assert {q: (held[q], eta[q]) for q in ("celery", "emails")} == {q: v[1:] for q, v in expected.items()}

        unacked = list(broker.unacked_messages())
        assert Counter(m.queue for m in unacked) == Counter({"celery": 3, "emails": 4})
        assert sum(1 for m in unacked if m.headers.eta) == 5
        assert all(m.delivered_at and abs(time.time() - m.delivered_at) < 60 for m in unacked)

        assert broker.worker_mailboxes() == nodes
        assert broker.known_queues() == ["celery", "emails"]
        assert broker.settings().visibility_timeout == 3600.0
    finally:
        broker.close()
        app.close()
        for worker in workers:  # nothing to keep: the database is flushed afterwards
            worker.kill()
            worker.wait(10)


def test_a_stopped_worker_leaves_the_mailbox_set_and_restores_its_messages(redis_url, start_workers):
    (worker,) = start_workers(redis_url, [("solo@dk-redis", ("celery",))])
    app = _client_app(redis_url)
    broker = RedisBroker(redis_url, transport_options={}, timeout=1.0)
    try:
        app.send_task("tests.apps.basic.add", args=(1, 2), queue="celery", countdown=300)
        deadline = time.monotonic() + 15
        while broker.queue_stats(["celery"]).queues[0].unacked != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert broker.worker_mailboxes() == ["solo@dk-redis"]
        worker.stop(timeout=20)  # warm shutdown: unacked messages go back to the queue
        (stats,) = broker.queue_stats(["celery"]).queues
        assert (stats.ready, stats.unacked, stats.unacked_eta) == (1, 0, 0)
        assert broker.worker_mailboxes() is None  # the last member left: Redis dropped the set
        (message,) = broker.iter_messages("celery")
        assert message.headers.eta and message.headers.task == "tests.apps.basic.add"
    finally:
        broker.close()
        app.close()
