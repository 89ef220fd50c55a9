"""The record stores (expiry, errors) and the progress display."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from deploykit.brokers.base import RawMessage
from deploykit.brokers.rabbitmq_api import ManagementAPI
from deploykit.brokers.records import ConsumerRecord, FileRecordStore, RabbitMQRecordStore
from deploykit.brokers.urls import ManagementEndpoint
from deploykit.errors import Unavailable
from deploykit.messages import StoredHeaders
from deploykit.orchestrate.common import Progress
from deploykit.orchestrate.shutdown import ShutdownMachine, ShutdownOptions
from deploykit.output.progress import ProgressDisplay
from tests.fakes import FakeBroker
from tests.orchestrate.sim import FakeClock, SimFleet, SimWorker, broker

A = ConsumerRecord("w1@h", "celery", {"name": "celery"}, "d1", 5.0)
B = ConsumerRecord("w2@h", "emails", {"name": "emails"}, "d1", 5.0)
ENDPOINT = ManagementEndpoint("http://mgmt", ("admin", "s3cret"), "http://admin:***@mgmt/")


def test_file_record_store_round_trip_and_expiry(tmp_path):
    now = [1000.0]
    store = FileRecordStore(tmp_path / "r.json", ttl=60, now=lambda: now[0])
    store.add([A, B])
    store.remove([B])
    assert store.load() == [A]
    now[0] += 61
    assert store.load() == []


def test_rabbitmq_record_store_keeps_a_global_parameter_and_expires_it():
    params: dict[str, dict] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        if request.method == "GET":
            return httpx.Response(200, json=params[name]) if name in params else httpx.Response(404)
        if request.method == "PUT":
            params[name] = json.loads(request.content)
            return httpx.Response(201)
        params.pop(name, None)
        return httpx.Response(204)

    now = [1000.0]
    api = ManagementAPI(ENDPOINT, transport=httpx.MockTransport(handler))
    store = RabbitMQRecordStore(api, "deploykit-consumers./.celery", ttl=60, now=lambda: now[0])
    store.add([A])
    store.add([B])
    assert [r.key for r in store.load()] == [A.key, B.key]
    (value,) = params.values()
    assert value["value"]["expires_at"] == 1060
    store.remove([A, B])
    assert params == {}  # an empty record is deleted, not kept
    store.add([A])
    now[0] += 61
    assert store.load() == []

    denied = RabbitMQRecordStore(
        ManagementAPI(ENDPOINT, transport=httpx.MockTransport(lambda r: httpx.Response(401))), "x"
    )
    with pytest.raises(Unavailable, match="administrator"):
        denied.load()

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused to admin:s3cret@mgmt")

    down = RabbitMQRecordStore(ManagementAPI(ENDPOINT, transport=httpx.MockTransport(unreachable)), "x")
    with pytest.raises(Unavailable) as caught:
        down.add([A])
    assert (
        str(caught.value)
        == "cannot reach the deploykit record (RabbitMQ global parameter 'x'): connection refused"
    )
    broken = RabbitMQRecordStore(
        ManagementAPI(ENDPOINT, transport=httpx.MockTransport(lambda r: httpx.Response(500))), "x"
    )
    with pytest.raises(Unavailable, match="HTTP 500"):
        broken.load()
    garbage = RabbitMQRecordStore(
        ManagementAPI(ENDPOINT, transport=httpx.MockTransport(lambda r: httpx.Response(200, json=["x"]))), "x"
    )
    assert garbage.load() == []  # a value that is no record is no record, not a crash


def test_progress_plain_lines_show_remaining_rate_elapsed_and_eta():
    out = io.StringIO()
    now = [0.0]
    display = ProgressDisplay(out, tty=False, interval=100, clock=lambda: now[0])
    display(Progress("drain", 10, 0.0, 10, "active 2, reserved 8"))
    now[0] = 1.0
    display(Progress("drain", 10, 1.0, 10))  # unchanged: not repeated
    now[0] = 2.0
    display(Progress("drain", 6, 2.0, 10))
    now[0] = 2.2
    display(Progress("drain", 5, 2.2, 10))  # changed, but within a second of the last line
    display(Progress("drain", 0, 4.0, 10))  # the final line always shows
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("drain: 10 left (active 2, reserved 8) · rate -")
    assert len(lines) == 3
    assert lines[1] == "drain: 6 left · 2.00/s · elapsed 2s · ETA 3s"
    assert lines[2].endswith("done")

    tty = io.StringIO()
    live = ProgressDisplay(tty, tty=True)
    live(Progress("drain", 1, 0.0))
    live.finish()
    assert tty.getvalue().startswith("\r\x1b[2K") and tty.getvalue().endswith("\n")


def test_shutdown_on_redis_sees_the_mailbox_go_and_counts_what_left_unacked():
    clock = FakeClock()
    fleet = SimFleet(
        clock, {"w1@h": SimWorker(["celery"], [("r1", "reserved", None), ("e1", "scheduled", None)])}
    )
    fake = broker(fleet)

    def unacked(task_id: str) -> RawMessage:
        return RawMessage(
            "unacked", "celery", StoredHeaders(id=task_id), "", None, None, None, 0, delivery_tag=task_id
        )

    fake.unacked = [unacked("r1"), unacked("e1")]
    machine = ShutdownMachine(fleet, fake, ShutdownOptions(timeout=10), timing=clock.timing())
    for _ in range(3):
        machine.step()
    assert machine.state.value == "wait-gone"
    machine.step()
    assert machine.state.value == "verify"
    sent = next(i for i, (command, _) in enumerate(fleet.calls) if command == "shutdown")
    assert [c for c, _ in fleet.calls[sent:]] == ["shutdown"]  # gone seen from the mailbox: no ping wait
    machine.step()  # still unacked: not verified yet
    assert machine.state.value == "verify"
    fake.unacked = []  # the worker's restore_unacked_once ran
    result = machine.run()
    assert result.status == "done" and result.returned == 2 == result.held and result.verified


def test_shutdown_drops_the_record_entries_of_workers_it_stopped():
    from deploykit.brokers.records import MemoryRecordStore

    clock = FakeClock()
    fleet = SimFleet(clock, {"w1@h": SimWorker([]), "w2@h": SimWorker([])})
    records = MemoryRecordStore([A, B])
    result = ShutdownMachine(
        fleet, broker(fleet), ShutdownOptions(workers=("w1",)), timing=clock.timing(), records=records
    ).run()
    assert result.status == "done"
    assert records.load() == [B]  # w2 was not stopped: its entry stays for `resume`


def _rabbit_after_shutdown(ready: int, unacked: int | None) -> tuple[ShutdownMachine, FakeBroker]:
    """A RabbitMQ-like fake: before the shutdown 0 ready and 3 unacked (the worker holds 3)."""
    from deploykit.brokers.base import QueueStats

    clock = FakeClock()
    held = [("r1", "reserved", None), ("e1", "scheduled", None), ("e2", "scheduled", None)]
    fleet = SimFleet(clock, {"w1@h": SimWorker(["celery"], held)})
    fake = broker(fleet, kind="rabbitmq", stats=[QueueStats("celery", ready=0, unacked=3, consumers=1)])
    machine = ShutdownMachine(fleet, fake, ShutdownOptions(timeout=10), timing=clock.timing())
    while machine.state.value != "verify":
        machine.step()
    fake.stats = {"celery": QueueStats("celery", ready=ready, unacked=unacked, consumers=0)}
    return machine, fake


@pytest.mark.parametrize(
    ("ready", "unacked", "verified_by"),
    [
        # the channel closed: the broker requeued all 3 at once; the statistics still say 3 unacked
        (3, 3, "queue message count (AMQP)"),
        # the management API is down: the ready count alone is enough
        (3, None, "queue message count (AMQP)"),
        # another worker took them again at once: only the (refreshed) statistics can tell
        (0, 0, "unacked statistics (management API)"),
    ],
)
def test_shutdown_on_rabbitmq_is_verified_by_whichever_count_confirms_first(ready, unacked, verified_by):
    machine, _ = _rabbit_after_shutdown(ready, unacked)
    machine.step()
    result = machine.result()
    assert result.status == "done" and result.verified and result.returned == 3 == result.held
    assert result.verified_by == verified_by


def test_shutdown_on_rabbitmq_waits_while_neither_count_shows_the_messages_back():
    machine, fake = _rabbit_after_shutdown(ready=1, unacked=3)
    machine.step()
    assert machine.state.value == "verify" and machine.returned == 1
    fake.stats["celery"] = fake.stats["celery"].__class__("celery", ready=3, unacked=3)
    machine.step()
    assert machine.result().verified_by == "queue message count (AMQP)"
