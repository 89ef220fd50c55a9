"""The remote-control client against real workers: early return, one round trip, no pickle."""

from __future__ import annotations

import time

import pytest

from deploykit.brokers.urls import mask_url
from deploykit.fleet.control import CeleryFleet
from deploykit.userapp import bare_app

pytestmark = pytest.mark.integration


def _fleet(url: str, timeout: float = 3.0) -> CeleryFleet:
    return CeleryFleet(bare_app(url, {}), timeout=timeout, display_url=mask_url(url) or "")


def test_ping_with_destination_returns_as_soon_as_all_answered(redis_url, start_workers):
    start_workers(redis_url, [("w1@dk", ("celery",)), ("w2@dk", ("celery", "emails"))])
    fleet = _fleet(redis_url, timeout=5.0)
    try:
        assert fleet.ping(["w1@dk", "w2@dk"]) == ["w1@dk", "w2@dk"]  # warm up the connection
        started = time.monotonic()
        assert fleet.ping(["w1@dk", "w2@dk"]) == ["w1@dk", "w2@dk"]
        assert time.monotonic() - started < 1.0, "must not wait out the 5 s timeout"

        started = time.monotonic()
        replies = fleet.gather({"stats": {}, "active_queues": {}, "scheduled": {}}, ["w1@dk", "w2@dk"])
        assert time.monotonic() - started < 1.0
        assert replies.missing == ()
        assert set(replies.by_command["stats"]) == {"w1@dk", "w2@dk"}
        queues = {n: sorted(q["name"] for q in r) for n, r in replies.by_command["active_queues"].items()}
        assert queues == {"w1@dk": ["celery"], "w2@dk": ["celery", "emails"]}
    finally:
        fleet.close()


def test_broadcast_ping_finds_everyone_and_a_dead_node_is_reported_missing(redis_url, start_workers):
    start_workers(redis_url, [("w1@dk", ("celery",))])
    fleet = _fleet(redis_url, timeout=1.0)
    try:
        assert fleet.ping(None) == ["w1@dk"]
        replies = fleet.gather({"ping": {}}, ["w1@dk", "ghost@dk"])
        assert replies.missing == ("ghost@dk",)
        assert list(replies.by_command["ping"]) == ["w1@dk"]
    finally:
        fleet.close()


def test_unreachable_broker_fails_fast_with_exit_69_error():
    from deploykit.demo.processes import free_port
    from deploykit.errors import Unavailable

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    fleet = _fleet(url, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        fleet.ping(None)
    assert time.monotonic() - started < 8
    assert "hunter2" not in info.value.message
