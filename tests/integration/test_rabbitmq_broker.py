"""RabbitMQBroker against the real local RabbitMQ and real ``celery worker`` processes.

Each test has its own vhost (``rabbitmq_vhost`` fixture, deleted afterwards). The management
API's counters refresh every 5 s (``collect_statistics_interval``), so tests poll with a deadline
and assert on the last answer instead of sleeping a fixed time.
"""

from __future__ import annotations

import os
import re
import runpy
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from kombu import Connection, Queue

from deploykit.brokers.base import QueueReport, QueueStats, is_delayed_queue
from deploykit.brokers.rabbitmq import RabbitMQBroker
from deploykit.demo.processes import WorkerProcess, free_port, start_worker, wait_for_workers
from deploykit.errors import Unavailable, UsageError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BASIC_APP = ROOT / "tests" / "apps" / "basic.py"
#: Stats refresh every 5 s; a quorum queue showed new counts only after 6.7 s.
STATS_DEADLINE = 20.0


@pytest.fixture
def worker(rabbitmq_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``worker(queues, **env)`` -> a ready worker of tests.apps.basic; killed afterwards.

    Killed rather than warm-stopped: a warm shutdown would wait for the 60 s sleep tasks, and the
    vhost (with everything the worker held) is deleted right after anyway.
    """
    started: list[WorkerProcess] = []

    def start(queues: tuple[str, ...], **env: str) -> WorkerProcess:
        process = start_worker(
            "tests.apps.basic",
            f"rmq-{uuid.uuid4().hex[:8]}@deploykit-test",
            queues=queues,
            concurrency=1,
            env={"DEPLOYKIT_TEST_BROKER": rabbitmq_url, "DEPLOYKIT_TEST_QUORUM": "", **env},
            cwd=ROOT,
            logdir=tmp_path,
        )
        started.append(process)
        wait_for_workers([process], timeout=60)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(10)


def publisher_app(broker_url: str, *, quorum: bool = False) -> Any:
    """A fresh instance of tests/apps/basic.py's Celery app, configured exactly as the worker's."""
    env = {"DEPLOYKIT_TEST_BROKER": broker_url, "DEPLOYKIT_TEST_QUORUM": "1" if quorum else ""}
    with mock.patch.dict(os.environ, env):
        namespace = runpy.run_path(str(BASIC_APP), run_name="deploykit_test_publisher")
    return namespace["app"]


def poll(read: Callable[[], QueueReport], done: Callable[[QueueReport], bool]) -> QueueReport:
    """Call ``read`` until ``done`` says yes or the deadline passes; return the last answer."""
    deadline = time.monotonic() + STATS_DEADLINE
    while True:
        report = read()
        if done(report) or time.monotonic() > deadline:
            return report
        time.sleep(0.25)


def by_name(report: QueueReport) -> dict[str, QueueStats]:
    return {q.name: q for q in report.queues}


def counts(stats: QueueStats) -> tuple[Any, ...]:
    return (stats.ready, stats.unacked, stats.consumers, stats.queue_type, stats.exists)


def test_classic_queues_ready_unacked_consumers_and_type(rabbitmq_url: str, worker: Any) -> None:
    worker(("celery",), DEPLOYKIT_TEST_PREFETCH="10")
    app = publisher_app(rabbitmq_url)
    try:
        with app.connection_for_write() as conn:
            # The worker consumes only "celery"; declare "emails" as the app defines it.
            app.amqp.queues["emails"].bind(conn.default_channel).declare()
        # Held unacked by the worker: 2 ETA tasks in its timer + 2 sleeps reserved behind the one
        # running (Celery acks a task when it starts, unless acks_late).
        for _ in range(2):
            app.send_task("tests.apps.basic.add", args=[1, 2], countdown=300, queue="celery")
        for _ in range(3):
            app.send_task("tests.apps.basic.sleep", args=[60], queue="celery")
        for n in range(2):
            app.send_task("tests.apps.basic.send_email", args=[f"u{n}@example.com"], queue="emails")
    finally:
        app.close()

    expected = {
        "celery": (0, 4, 1, "classic", True),
        "emails": (2, 0, 0, "classic", True),
        "nosuchqueue": (None, None, None, None, False),
    }
    with RabbitMQBroker(rabbitmq_url, management_url=None, timeout=1.0) as broker:
        report = poll(
            lambda: broker.queue_stats(list(expected)),
            lambda r: {n: counts(s) for n, s in by_name(r).items()} == expected,
        )
        assert {n: counts(s) for n, s in by_name(report).items()} == expected
        assert report.source == "management-api"
        assert report.notes == ()
        assert report.delayed is None
        assert broker.known_queues() == ["celery", "emails"]


CELERY_VERSION = tuple(int(x) for x in __import__("celery").__version__.split(".")[:2])


@pytest.mark.skipif(CELERY_VERSION < (5, 5), reason="quorum queues need Celery 5.5+")
def test_quorum_queues_with_native_delayed_delivery(rabbitmq_url: str, worker: Any) -> None:
    worker(("celery",), DEPLOYKIT_TEST_QUORUM="1")
    app = publisher_app(rabbitmq_url, quorum=True)
    try:
        for _ in range(3):
            app.send_task("tests.apps.basic.add", args=[1, 2], countdown=300, queue="celery")
    finally:
        app.close()

    with RabbitMQBroker(rabbitmq_url, management_url=None) as broker:
        report = poll(
            lambda: broker.queue_stats(["celery"]),
            lambda r: r.delayed is not None and r.delayed.messages == 3 and r.queues[0].unacked == 0,
        )
        celery = report.queues[0]
        # The ETA tasks wait in the broker, not in the worker: nothing is unacked.
        assert counts(celery) == (0, 0, 1, "quorum", True)
        assert celery.arguments.get("x-queue-type") == "quorum"
        assert report.delayed is not None
        assert report.delayed.messages == 3
        assert report.delayed.queues == tuple(f"celery_delayed_{n}" for n in range(28))
        known = broker.known_queues()
        assert "celery" in known
        assert not any(is_delayed_queue(name) for name in known)


def test_management_api_down_falls_back_to_amqp_and_says_so(rabbitmq_url: str) -> None:
    with Connection(rabbitmq_url) as conn:
        channel = conn.default_channel
        Queue("celery", durable=True)(channel).declare()
        for _ in range(2):
            channel.basic_publish(channel.prepare_message(b"{}"), exchange="", routing_key="celery")

    port = free_port()
    closed = f"http://guest:guest@127.0.0.1:{port}/"
    with RabbitMQBroker(rabbitmq_url, management_url=closed) as broker:
        report = broker.queue_stats(["celery", "missing"])
        celery, missing = report.queues
        assert counts(celery) == (2, None, 0, None, True)
        assert not missing.exists
        assert report.source == "amqp-passive"
        assert report.notes == (
            f"management API unreachable at http://guest:***@127.0.0.1:{port}/ (connection refused): "
            "showing ready counts from AMQP only; unacked unknown",
        )
        assert broker.known_queues() == []
        assert broker.worker_mailboxes() is None

    wrong = "http://guest:not-the-password@127.0.0.1:15672/"
    with RabbitMQBroker(rabbitmq_url, management_url=wrong) as broker:
        report = broker.queue_stats(["celery"])
        assert report.queues[0].ready == 2 and report.queues[0].unacked is None
        assert report.notes[0].startswith(
            "management API at http://guest:***@127.0.0.1:15672/ rejected the credentials (HTTP 401"
        )
        assert "not-the-password" not in repr(report)


def test_unreachable_broker_is_unavailable_fast() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    start = time.monotonic()
    with (
        RabbitMQBroker(url, management_url=f"http://127.0.0.1:{free_port()}/") as broker,
        pytest.raises(Unavailable, match=r"cannot reach broker amqp://guest:\*\*\*@127\.0\.0\.1"),
    ):
        broker.queue_stats(["celery"])
    assert time.monotonic() - start < 3


def test_wrong_password_is_a_usage_error_without_the_password(rabbitmq_vhost: str) -> None:
    url = f"amqp://guest:Wr0ng-S3cret@127.0.0.1:5672/{rabbitmq_vhost}"
    with RabbitMQBroker(url, management_url=None) as broker, pytest.raises(UsageError) as caught:
        broker.queue_stats(["celery"])
    assert "rejected the credentials" in caught.value.message
    assert "Wr0ng-S3cret" not in caught.value.message
    assert "guest:***@" in caught.value.message


def test_unknown_vhost_is_a_usage_error() -> None:
    vhost = f"no-such-vhost-{uuid.uuid4().hex[:6]}"
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    # Through the management API (404 for the vhost) …
    with RabbitMQBroker(url, management_url=None) as broker:
        with pytest.raises(UsageError, match=re.escape(f"virtual host '{vhost}' does not exist")):
            broker.known_queues()
        with pytest.raises(UsageError, match="does not exist"):
            broker.queue_stats(["celery"])
    # … and through AMQP alone (530 NOT_ALLOWED on connection.open).
    closed = f"http://127.0.0.1:{free_port()}/"
    with (
        RabbitMQBroker(url, management_url=closed) as broker,
        pytest.raises(UsageError, match=re.escape(f"cannot open virtual host '{vhost}': NOT_ALLOWED")),
    ):
        broker.queue_stats(["celery"])


def test_worker_mailboxes_lists_exactly_the_running_worker(rabbitmq_url: str, worker: Any) -> None:
    process = worker(("celery",))
    with RabbitMQBroker(rabbitmq_url, management_url=None) as broker:
        deadline = time.monotonic() + STATS_DEADLINE
        nodes = broker.worker_mailboxes()
        while nodes != [process.nodename] and time.monotonic() < deadline:
            time.sleep(0.25)
            nodes = broker.worker_mailboxes()
        assert nodes == [process.nodename]
        assert broker.worker_mailboxes("other-exchange") == []
