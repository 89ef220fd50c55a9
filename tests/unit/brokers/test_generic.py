"""KombuBroker: ready counts through a passive queue_declare, on memory:// and on Redis via kombu."""

from __future__ import annotations

import time
import uuid

import pytest
from kombu import Connection

from deploykit.brokers.generic import KombuBroker
from deploykit.demo.processes import free_port
from deploykit.errors import Refused, Unavailable


def test_memory_transport_ready_counts_and_missing_queues() -> None:
    name = f"q-{uuid.uuid4().hex[:8]}"
    with Connection("memory://") as conn:
        queue = conn.SimpleQueue(name)
        for i in range(3):
            queue.put({"i": i})
        queue.close()
    with KombuBroker("memory://", transport_options={}, timeout=1.0) as broker:
        report = broker.queue_stats([name, "missing-" + name, name])
        assert report.source == "kombu"
        assert report.notes == (
            "kombu transport 'memory': only ready counts are known (no unacked or ETA counts)",
        )
        rows = [(s.name, s.ready, s.unacked, s.unacked_eta, s.consumers, s.exists) for s in report.queues]
        assert rows == [
            (name, 3, None, None, None, True),
            ("missing-" + name, None, None, None, None, False),  # the failed probe did not poison the next
            (name, 3, None, None, None, True),
        ]
        assert broker.known_queues() == []
        assert broker.worker_mailboxes() is None
        assert list(broker.unacked_messages()) == []
        with pytest.raises(Refused):
            list(broker.iter_messages(name))


def test_redis_through_kombu_counts_what_kombu_counts(redis_url: str) -> None:
    with Connection(redis_url) as conn:
        queue = conn.SimpleQueue("jobs")
        for i in range(4):
            queue.put({"i": i}, priority=i * 3)
        queue.close()
    with KombuBroker(redis_url, transport_options={}, timeout=1.0) as broker:
        (jobs,) = broker.queue_stats(["jobs"]).queues
        assert (jobs.ready, jobs.exists, jobs.consumers) == (4, True, None)


def test_unreachable_broker_is_unavailable_quickly_and_masked() -> None:
    url = f"redis://:pw-secret@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        KombuBroker(url, transport_options={}, timeout=1.0).queue_stats(["celery"])
    assert time.monotonic() - started < 3
    assert "pw-secret" not in info.value.message and ":***@" in info.value.message
