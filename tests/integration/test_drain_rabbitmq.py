"""``drain`` / ``resume`` / ``shutdown`` end to end on RabbitMQ (record in a global parameter)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import RABBIT_AUTH, RABBIT_MGMT
from tests.orchestrate.live import active_queues, deploykit, result_json, send, succeeded, wait_for

pytestmark = pytest.mark.integration


def _queue(vhost: str, name: str) -> dict:
    with httpx.Client(base_url=RABBIT_MGMT, auth=RABBIT_AUTH, timeout=10) as client:
        return client.get(f"/api/queues/{vhost}/{name}").json()


def _record(vhost: str) -> int:
    with httpx.Client(base_url=RABBIT_MGMT, auth=RABBIT_AUTH, timeout=10) as client:
        response = client.get(f"/api/global-parameters/deploykit-consumers.{vhost}.celery")
        return 0 if response.status_code == 404 else len(response.json()["value"]["entries"])


def test_drain_resume_and_shutdown_on_rabbitmq(rabbitmq_url, rabbitmq_vhost, start_workers):
    (w1,) = start_workers(rabbitmq_url, [("w1@dk", ("celery",))])
    for _ in range(3):
        send(rabbitmq_url, "tests.apps.basic.sleep", (1.0,))
    wait_for(lambda: "] received" in w1.log())

    # management API down: the record cannot be written, so nothing is cancelled (exit 69)
    down = deploykit(rabbitmq_url, "drain", "--management-url", "http://guest:s3cret@127.0.0.1:9/")
    assert down.returncode == 69, down.stderr
    assert "deploykit record" in down.stderr and "s3cret" not in down.stderr
    assert active_queues(rabbitmq_url, "w1@dk") == ["celery"]

    proc = deploykit(rabbitmq_url, "drain", "--timeout", "60s", "--json")
    doc = result_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert doc["status"] == "drained" and succeeded(w1.log()) == 3
    assert active_queues(rabbitmq_url, "w1@dk") == []
    assert _record(rabbitmq_vhost) == 1
    assert "channel closes" in doc["eta_fate"]

    send(rabbitmq_url, "tests.apps.basic.add", (1, 2))
    time.sleep(1.0)
    assert succeeded(w1.log()) == 3  # nothing new picked up

    proc = deploykit(rabbitmq_url, "resume", "--json")
    assert proc.returncode == 0, proc.stderr
    assert active_queues(rabbitmq_url, "w1@dk") == ["celery"]
    assert _record(rabbitmq_vhost) == 0
    wait_for(lambda: succeeded(w1.log()) == 4, timeout=10)

    # shutdown: 1 running, 2 prefetched, 1 ETA -> the 3 held come back to the queue
    # Long enough to be still running when the CLI looks, even on a loaded machine (parallel tests).
    send(rabbitmq_url, "tests.apps.basic.sleep", (4,))
    send(rabbitmq_url, "tests.apps.basic.add", (1, 1))
    send(rabbitmq_url, "tests.apps.basic.add", (2, 2))
    send(rabbitmq_url, "tests.apps.basic.add", (3, 3), countdown=600)
    wait_for(lambda: w1.log().count("] received") == 8, timeout=10)
    proc = deploykit(rabbitmq_url, "shutdown", "--timeout", "40s", "--json")
    doc = result_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert doc["status"] == "done" and doc["held"] == 3 and doc["returned"] == 3, doc
    assert w1.wait(20) is not None
    assert succeeded(w1.log()) == 5  # the running one finished
    wait_for(lambda: _queue(rabbitmq_vhost, "celery").get("messages_ready") == 3, timeout=15)


def test_shutdown_of_a_worker_holding_only_eta_messages_is_verified_without_waiting_for_statistics(
    rabbitmq_url, rabbitmq_vhost, start_workers
):
    """The held messages are back as soon as the worker's channel closes: a passive declare sees
    them at once, while the management API's unacked statistics refresh only every 5 s."""
    (w1,) = start_workers(rabbitmq_url, [("w1@dk", ("celery",))])
    for n in range(3):
        send(rabbitmq_url, "tests.apps.basic.add", (n, n), countdown=900)
    wait_for(lambda: w1.log().count("] received") == 3, timeout=10)
    # Let the statistics catch up with the held messages, so a verification that reads them has
    # to wait for their next refresh.
    wait_for(lambda: _queue(rabbitmq_vhost, "celery").get("messages_unacknowledged") == 3, timeout=15)

    proc = deploykit(rabbitmq_url, "shutdown", "--timeout", "40s", "--json")
    doc = result_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert doc["held"] == 3 and doc["returned"] == 3 and doc["verified"] is True, doc
    gone_after = doc["workers"][0]["gone_after"]
    # Verified within a moment of the worker going away, not a statistics interval later.
    assert doc["elapsed"] - gone_after < 2.0, doc
    assert doc["verified_by"] == "queue message count (AMQP)", doc
    assert w1.wait(20) is not None


def test_until_empty_incompatible_with_is_refused_where_messages_cannot_be_read_in_place(
    rabbitmq_url, rabbitmq_vhost, tmp_path
):
    """RabbitMQ cannot list waiting messages without consuming them: a usage error, nothing done."""
    manifest = tmp_path / "new.json"
    manifest.write_text("{}")
    args = ("drain", "--until-empty", "--incompatible-with", str(manifest), "--timeout", "5s")
    proc = deploykit(rabbitmq_url, *args)
    assert proc.returncode == 2, proc.stderr
    assert "without consuming them (Redis); rabbitmq cannot: use plain --until-empty" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _record(rabbitmq_vhost) == 0
