"""The inspection commands end to end on RabbitMQ: real worker, private vhost, the real CLI."""

from __future__ import annotations

import json
import time

import pytest

from deploykit.demo.processes import free_port
from tests.integration.test_inspect_cli import deploykit, send
from tests.orchestrate.live import wait_for

pytestmark = pytest.mark.integration


def test_workers_queues_scheduled_on_rabbitmq(rabbitmq_url, start_workers):
    (worker,) = start_workers(rabbitmq_url, [("r1@dk", ("celery", "emails"))])
    send(rabbitmq_url, "tests.apps.basic.sleep", (8,))
    send(rabbitmq_url, "tests.apps.basic.add", (1, 2), countdown=3600)  # beyond the 30 min consumer_timeout
    send(rabbitmq_url, "tests.apps.basic.add", (1, 2), countdown=60)
    for _ in range(3):
        send(rabbitmq_url, "tests.apps.basic.add", (5, 5), queue="reports")
    wait_for(lambda: worker.log().count("] received") == 3)  # the running task and the two ETA ones

    workers = json.loads(deploykit("workers", "--json", "-b", rabbitmq_url).stdout)
    assert [w["hostname"] for w in workers["workers"]] == ["r1@dk"]
    assert workers["discovery"]["method"] == "broker-mailboxes"
    (worker,) = workers["workers"]
    assert (worker["active"], worker["scheduled"]) == (1, 2)

    # Management counters lag by up to ~5 s: poll until they show what the worker holds.
    deadline = time.monotonic() + 20
    while True:
        result = deploykit("queues", "--json", "-b", rabbitmq_url)
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        rows = {q["name"]: q for q in doc["queues"]}
        if rows.get("celery", {}).get("unacked") == 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert doc["source"] == "management-api"
    # The running sleep task was acked when it started; the two ETA tasks are held unacked.
    assert rows["celery"]["unacked"] == 2 and rows["celery"]["eta_held"] == 2
    assert rows["celery"]["queue_type"] == "classic" and rows["celery"]["consumers"] == 1
    assert rows["reports"]["ready"] == 3 and rows["reports"]["consumers"] == 0

    scheduled = json.loads(deploykit("scheduled", "--json", "-b", rabbitmq_url).stdout)
    hazards = [h["code"] for e in scheduled["scheduled"] for h in e["hazards"]]
    assert hazards == ["ETA_BEYOND_CONSUMER_TIMEOUT"]
    assert scheduled["broker_settings"]["consumer_timeout"] == 1800

    # The management API is down: ready counts still come (AMQP), unacked is unknown, and it says so.
    closed = f"http://guest:guest@127.0.0.1:{free_port()}/"
    fallback = deploykit(
        "queues", "--json", "-b", rabbitmq_url, "--management-url", closed, "-Q", "celery", "-Q", "reports"
    )
    assert fallback.returncode == 0, fallback.stderr
    doc = json.loads(fallback.stdout)
    rows = {q["name"]: q for q in doc["queues"]}
    assert doc["source"] == "amqp-passive"
    assert rows["celery"]["unacked"] is None and rows["reports"]["ready"] == 3
    assert any("management API" in note and "unacked unknown" in note for note in doc["notes"])
    text = deploykit("queues", "-b", rabbitmq_url, "--management-url", closed)
    assert "?" in text.stdout and "management API" in text.stdout


def test_wrong_rabbitmq_credentials_exit_2_without_the_password(rabbitmq_vhost):
    url = f"amqp://guest:not-the-password@127.0.0.1:5672/{rabbitmq_vhost}"
    result = deploykit("status", "-b", url)
    assert result.returncode == 2, result.stderr
    assert "credentials" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout


def test_waiting_eta_messages_on_rabbitmq_are_counted_not_listed(rabbitmq_url):
    """No worker: RabbitMQ cannot show which waiting messages carry an ETA without consuming
    them, so ``scheduled`` and ``status`` count the waiting messages and say so in one line."""
    from celery import Celery

    producer = Celery("producer", broker=rabbitmq_url, set_as_current=False)
    for n in range(3):
        producer.send_task("tests.apps.basic.add", args=[n, n], countdown=3600, queue="celery")

    text = deploykit("scheduled", "-b", rabbitmq_url, "-A", "tests.apps.basic")
    assert text.returncode == 0, text.stderr
    notes = [line for line in text.stdout.splitlines() if line.startswith("Note:")]
    assert any("3 message(s) wait in celery (3)" in n and "without consuming" in n for n in notes), (
        text.stdout
    )
    doc = json.loads(deploykit("scheduled", "--json", "-b", rabbitmq_url, "-A", "tests.apps.basic").stdout)
    assert doc["waiting_eta"]["unlisted"] == {"celery": 3}
    status = deploykit("status", "-b", rabbitmq_url, "-A", "tests.apps.basic")
    assert "3 message(s) wait in celery (3)" in status.stdout
    # counted by passive declares: still there
    assert json.loads(deploykit("queues", "--json", "-b", rabbitmq_url).stdout)["queues"][0]["ready"] == 3
