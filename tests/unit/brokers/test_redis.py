"""RedisBroker against a private redis-server, with messages published by Celery and kombu."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Producer, Queue

from deploykit.brokers import redis as redis_broker
from deploykit.brokers.redis import RedisBroker, attribute, priority_keys
from deploykit.demo.processes import free_port, redis_server_binary
from deploykit.errors import Unavailable, UsageError
from deploykit.messages import NO_HEADERS


def make_app(url: str, options: dict[str, Any] | None = None) -> Celery:
    app = Celery("unit", broker=url, set_as_current=False)
    app.conf.broker_transport_options = options or {}
    app.conf.task_queues = [
        Queue("celery", Exchange("celery", type="direct"), routing_key="celery"),
        Queue("emails", Exchange("emails", type="direct"), routing_key="emails"),
    ]
    return app


def send(app: Celery, queue: str = "celery", **options: Any) -> str:
    return str(app.send_task("tasks.add", args=(1, 2), queue=queue, **options).id)


def dump_all(url: str) -> dict[bytes, Any]:
    """Every key with its type, DUMP payload and TTL: to prove nothing was modified."""
    client = redis.Redis.from_url(url)
    state = {
        key: (client.type(key), client.dump(key), client.pttl(key)) for key in client.scan_iter(count=1000)
    }
    client.close()
    return state


def consume_order(url: str, queue: str, options: dict[str, Any] | None = None) -> list[str]:
    """Task ids in the order kombu's own consumer takes them (destructive: call last)."""
    ids = []
    with Connection(url, transport_options=options or {}) as conn:
        channel = conn.channel()
        bound = Queue(queue)(channel)
        while (message := bound.get(no_ack=True)) is not None:
            ids.append(message.headers["id"])
    return ids


@pytest.fixture
def broker(redis_url: str) -> Iterator[RedisBroker]:
    with RedisBroker(redis_url, transport_options={}, timeout=1.0) as b:
        yield b  # type: ignore[misc]


# ------------------------------------------------------------------------------------------
def test_priority_keys_follow_kombu() -> None:
    sep = "\x06\x16"
    assert priority_keys("q", (0, 3, 6, 9), sep) == [
        (0, "q"),
        (3, "q" + sep + "3"),
        (6, "q" + sep + "6"),
        (9, "q" + sep + "9"),
    ]
    assert priority_keys("q", (0, 5), ":") == [(0, "q"), (5, "q:5")]


def test_ready_counts_per_priority_and_empty_and_unknown_queues(redis_url: str, broker: RedisBroker) -> None:
    app = make_app(redis_url)
    for priority in (0, 0, 0, 2, 5, 9):  # 2 -> step 0, 5 -> step 3 (Channel.priority)
        send(app, priority=priority)
    send(app, queue="emails")
    # declare-and-drain 'emails' so it is bound but has no key left
    assert len(consume_order(redis_url, "emails")) == 1

    report = broker.queue_stats(["celery", "emails", "nosuch"])
    celery, emails, nosuch = report.queues
    assert report.source == "redis"
    assert (celery.ready, celery.ready_by_priority, celery.exists) == (6, {0: 4, 3: 1, 6: 0, 9: 1}, True)
    assert (celery.unacked, celery.unacked_eta, celery.consumers, celery.queue_type) == (0, 0, None, None)
    assert (emails.ready, emails.exists) == (0, True)
    assert (nosuch.name, nosuch.ready, nosuch.exists) == ("nosuch", 0, False)
    assert broker.known_queues() == ["celery", "emails"]
    assert broker.queue_stats([]).queues == ()


def test_custom_sep_steps_and_global_keyprefix(redis_url: str) -> None:
    options = {"sep": ":", "priority_steps": [0, 5], "global_keyprefix": "app1:"}
    app = make_app(redis_url, options)
    for priority in (0, 4, 5, 7):
        send(app, priority=priority)
    raw = redis.Redis.from_url(redis_url)
    assert raw.llen("app1:celery") == 2 and raw.llen("app1:celery:5") == 2
    assert raw.smembers("app1:_kombu.binding.celery") == {b"celery::celery"}
    raw.close()

    with RedisBroker(redis_url, transport_options=options, timeout=1) as broker:
        (stats,) = broker.queue_stats(["celery"]).queues
        assert (stats.ready, stats.ready_by_priority, stats.exists) == (4, {0: 2, 5: 2}, True)
        assert broker.known_queues() == ["celery"]  # Celery declares only the queues it publishes to
        listed = [m.headers.id for m in broker.iter_messages("celery", batch=1)]
        # A delivery through kombu with the same options lands in the prefixed unacked hash.
        with Connection(redis_url, transport_options=options) as conn:
            held = Queue("celery")(conn.channel()).get(no_ack=False)
            assert held is not None
            (stats,) = broker.queue_stats(["celery"]).queues
            assert (stats.ready, stats.unacked, stats.ready_by_priority) == (3, 1, {0: 1, 5: 2})
            (unacked,) = broker.unacked_messages()
            assert unacked.headers.id == held.headers["id"] and unacked.delivered_at is not None
            assert unacked.queue == "celery"
    # Without the options, nothing of that layout is visible.
    with RedisBroker(redis_url, transport_options={}, timeout=1) as plain:
        assert plain.known_queues() == []
        assert plain.queue_stats(["celery"]).queues[0].exists is False
    assert listed == consume_order(redis_url, "celery", options)


def test_iter_messages_is_consume_order_and_changes_nothing(redis_url: str, broker: RedisBroker) -> None:
    app = make_app(redis_url)
    for i in range(23):
        send(app, priority=(0, 3, 6, 9, 4)[i % 5])
    before = dump_all(redis_url)
    messages = list(broker.iter_messages("celery", batch=4))
    assert dump_all(redis_url) == before
    assert len(messages) == 23
    first = messages[0]
    assert first.location == "ready" and first.queue == "celery"
    # The base64 body comes decoded: the serialized (args, kwargs, embed) of the call.
    assert first.body_encoding is None and first.content_type == "application/json"
    assert json.loads(first.body)[:2] == [[1, 2], {}]
    assert first.content_encoding == "utf-8" and first.size > 500
    assert first.headers.task == "tasks.add" and first.delivery_tag
    assert [m.headers.id for m in messages] == consume_order(redis_url, "celery")
    assert list(broker.iter_messages("nosuch")) == []


def _envelope(i: int) -> bytes:
    return json.dumps(
        {"body": "", "headers": {"id": f"m{i}"}, "properties": {"delivery_tag": f"t{i}"}}
    ).encode()


@pytest.mark.parametrize("pops", [0, 1, 3, 7])
def test_iter_messages_skips_nothing_while_the_queue_moves(
    redis_url: str, broker: RedisBroker, pops: int
) -> None:
    raw = redis.Redis.from_url(redis_url)
    raw.lpush("celery", *[_envelope(i) for i in range(20)])  # m0 is next (index -1)
    seen = []
    iterator = broker.iter_messages("celery", batch=5)
    for _ in range(5):
        seen.append(next(iterator).headers.id)
    # Meanwhile: producers push at the head, a consumer pops from the tail.
    raw.lpush("celery", *[_envelope(i) for i in range(100, 104)])
    for _ in range(pops):
        raw.rpop("celery")
    seen += [m.headers.id for m in iterator]
    raw.close()
    original = [f"m{i}" for i in range(20)]
    assert seen[:5] == original[:5]
    # Every original message still waiting was seen exactly once, in order; the ones popped
    # before we reached them are gone (a worker holds them now).
    assert [m for m in seen if m in original] == original[:5] + original[max(5, pops) :]
    assert [m for m in seen if m not in original] == ["m100", "m101", "m102", "m103"]
    assert len(seen) == len(set(seen))


def test_iter_messages_restarts_when_the_anchor_was_consumed(redis_url: str, broker: RedisBroker) -> None:
    raw = redis.Redis.from_url(redis_url)
    raw.lpush("celery", *[_envelope(i) for i in range(12)])
    iterator = broker.iter_messages("celery", batch=4)
    seen = [next(iterator).headers.id for _ in range(4)]
    for _ in range(6):  # consumers took m0..m5, including the anchor m3
        raw.rpop("celery")
    seen += [m.headers.id for m in iterator]
    raw.close()
    assert seen == ["m0", "m1", "m2", "m3", "m6", "m7", "m8", "m9", "m10", "m11"]


def test_garbage_in_a_list_is_returned_raw_not_raised(redis_url: str, broker: RedisBroker) -> None:
    raw = redis.Redis.from_url(redis_url)
    raw.lpush("celery", b"\x80not json")
    raw.close()
    (message,) = broker.iter_messages("celery")
    assert (message.body, message.headers, message.content_type, message.size) == (
        b"\x80not json",
        NO_HEADERS,
        None,
        9,
    )


def test_unacked_attribution_and_eta(redis_url: str, broker: RedisBroker) -> None:
    app = make_app(redis_url)
    eta_ids = [send(app, countdown=300), send(app, countdown=600)]
    plain_id = send(app)
    send(app)  # stays ready
    with Connection(redis_url) as conn:
        channel = conn.channel()
        producer = Producer(channel)
        emails_x = Exchange("emails", type="direct")
        events_x = Exchange("events", type="topic")
        audit = Queue("audit", events_x, routing_key="user.#")
        emails = Queue("emails", emails_x, routing_key="emails")
        producer.publish(
            {"a": 1}, exchange=emails_x, routing_key="emails", declare=[emails], headers={"id": "e1"}
        )
        producer.publish(
            {"a": 2}, exchange=events_x, routing_key="user.created.v2", declare=[audit], headers={"id": "u1"}
        )
        started = time.time()
        held = [Queue("celery")(channel).get(no_ack=False) for _ in range(3)]
        held.append(emails(channel).get(no_ack=False))
        held.append(audit(channel).get(no_ack=False))
        assert all(held)

        report = broker.queue_stats(["celery", "emails", "audit"])
        rows = {s.name: (s.ready, s.unacked, s.unacked_eta, s.exists) for s in report.queues}
        assert rows == {"celery": (1, 3, 2, True), "emails": (0, 1, 0, True), "audit": (0, 1, 0, True)}
        assert report.notes == ()

        unacked = sorted(broker.unacked_messages(), key=lambda m: str(m.headers.id))
        by_id = {m.headers.id: m for m in unacked}
        assert set(by_id) == {*eta_ids, plain_id, "e1", "u1"}
        assert {i: by_id[i].queue for i in by_id} == {
            eta_ids[0]: "celery",
            eta_ids[1]: "celery",
            plain_id: "celery",
            "e1": "emails",
            "u1": "audit",
        }
        assert [bool(by_id[i].headers.eta) for i in (*eta_ids, plain_id)] == [True, True, False]
        for message in unacked:
            assert message.location == "unacked" and message.delivery_tag
            assert message.delivered_at is not None and abs(message.delivered_at - started) < 30
        assert by_id["e1"].content_type == "application/json"
    # Closing the connection restored them (QoS.restore_at_shutdown): nothing unacked remains.
    assert [s.unacked for s in broker.queue_stats(["celery", "emails", "audit"]).queues] == [0, 0, 0]
    assert broker.queue_stats(["celery"]).queues[0].ready == 4


def test_attribution_rules() -> None:
    tables = {
        "emails": {("emails", "", "emails"), ("bulk", "", "bulk")},
        "events": {("user.*", "^user\\.[^\\.]+$", "users"), ("#", "^.*?$", "all")},
        "bcast": {("", "", "w1"), ("", "", "w2")},
    }
    assert attribute(tables, "", "celery") == ("celery",)
    assert attribute(tables, "emails", "bulk") == ("bulk",)
    assert attribute(tables, "events", "user.created") == ("all", "users")
    assert attribute(tables, "events", "order.paid") == ("all",)
    assert attribute(tables, "bcast", "anything") == ("w1", "w2")  # fanout: no binding matches
    assert attribute(tables, "gone", "x") == ()


def test_unacked_streams_a_large_hash_and_notes_orphans(redis_url: str, broker: RedisBroker) -> None:
    raw = redis.Redis.from_url(redis_url)
    pipe = raw.pipeline()
    for i in range(1500):
        envelope = {
            "headers": {"id": f"t{i}", "eta": "2030-01-01T00:00:00" if i % 3 == 0 else None},
            "properties": {},
        }
        pipe.hset("unacked", f"tag{i}", json.dumps([envelope, "", "celery"]))
        pipe.zadd("unacked_index", {f"tag{i}": 1000.0 + i})
    pipe.hset("unacked", "orphan", json.dumps([{"headers": {}}, "nobindings", "x"]))
    pipe.execute()
    raw.close()
    report = broker.queue_stats(["celery"])
    assert (report.queues[0].unacked, report.queues[0].unacked_eta) == (1500, 500)
    (note,) = report.notes
    assert note.startswith("1 unacknowledged message(s) could not be attributed to a queue")
    messages = list(broker.unacked_messages())
    assert len(messages) == 1501
    by_tag = {m.delivery_tag: m for m in messages}
    assert by_tag["tag7"].delivered_at == 1007.0 and by_tag["tag7"].queue == "celery"
    assert by_tag["orphan"].queue is None and by_tag["orphan"].delivered_at is None


def test_worker_mailboxes_and_settings(redis_url: str) -> None:
    options = {"global_keyprefix": "p/", "visibility_timeout": 7200}
    with RedisBroker(redis_url, transport_options=options, timeout=1) as broker:
        assert broker.worker_mailboxes() is None
        raw = redis.Redis.from_url(redis_url)
        sep = "\x06\x16"
        raw.sadd(
            "p/_kombu.binding.celery.pidbox",
            f"{sep}{sep}w1@host.celery.pidbox",
            f"{sep}{sep}w2@h.celery.pidbox",
        )
        raw.sadd("p/_kombu.binding.other.pidbox", f"{sep}{sep}w3@h.other.pidbox")
        raw.close()
        assert broker.worker_mailboxes() == ["w1@host", "w2@h"]
        assert broker.worker_mailboxes("other") == ["w3@h"]
        assert broker.known_queues() == []  # mailboxes are internal
        assert broker.settings().visibility_timeout == 7200.0
    with RedisBroker(redis_url, transport_options={}, timeout=1) as broker:
        assert broker.settings().visibility_timeout == 3600.0


def test_unreachable_broker_fails_fast_with_the_url_masked() -> None:
    url = f"redis://:s3cr3t-pw@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        RedisBroker(url, transport_options={}, timeout=1.0).queue_stats(["celery"])
    assert time.monotonic() - started < 3
    assert "s3cr3t-pw" not in info.value.message
    assert "redis://:***@127.0.0.1" in info.value.message
    with pytest.raises(Unavailable):
        list(RedisBroker(url, transport_options={}, timeout=1.0).iter_messages("celery"))
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"sentinel://:\*\*\*@127\.0\.0\.1"):
        sentinel = f"sentinel://:s3cr3t-pw@127.0.0.1:{free_port()}/0"
        RedisBroker(sentinel, transport_options={"master_name": "m"}, timeout=1.0).known_queues()
    assert time.monotonic() - started < 2, "redis-py's default retries must be off"


def test_connect_timeout_is_bounded() -> None:
    broker = RedisBroker("redis://127.0.0.1:1/0", transport_options={}, timeout=60)
    assert broker.connect_timeout == redis_broker.MAX_CONNECT_TIMEOUT
    assert broker.read_timeout == 60


@pytest.fixture(scope="module")
def protected_redis() -> Iterator[int]:
    """A private redis-server that requires a password."""
    workdir = tempfile.mkdtemp(prefix="deploykit-redis-auth-")
    port = free_port()
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--requirepass",
            "right-pw",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, password="right-pw")
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        process.terminate()
        process.wait(10)
        Path(workdir).rmdir() if not any(Path(workdir).iterdir()) else None


@pytest.mark.parametrize("userinfo", [":wrong-pw@", "default:wrong-pw@", ""])
def test_bad_credentials_are_a_usage_error_without_the_password(protected_redis: int, userinfo: str) -> None:
    url = f"redis://{userinfo}127.0.0.1:{protected_redis}/0"
    with pytest.raises(UsageError) as info:
        RedisBroker(url, transport_options={}, timeout=1.0).known_queues()
    assert "broker rejected the credentials" in info.value.message
    assert "wrong-pw" not in info.value.message
    ok = RedisBroker(f"redis://:right-pw@127.0.0.1:{protected_redis}/0", transport_options={}, timeout=1.0)
    assert ok.known_queues() == []
    ok.close()


def test_invalid_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="priority_steps"):
        RedisBroker("redis://localhost/0", transport_options={"priority_steps": ["x"]}, timeout=1)
    with pytest.raises(UsageError, match="master_name"):
        RedisBroker("sentinel://localhost:26379", transport_options={}, timeout=1)


@pytest.fixture(scope="module")
def redis_with_sentinel() -> Iterator[tuple[int, int, str]]:
    """A private redis-server on a TCP port and a unix socket, watched by a private Sentinel."""
    workdir = Path(tempfile.mkdtemp(prefix="deploykit-sentinel-"))
    port, sentinel_port = free_port(), free_port()
    binary = redis_server_binary()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    server = subprocess.Popen(
        [binary, "--port", str(port), "--unixsocket", str(workdir / "r.sock"), *common],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = workdir / "sentinel.conf"  # Sentinel insists on a writable config file
    config.write_text(f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor mym 127.0.0.1 {port} 1\n")
    sentinel = subprocess.Popen(
        [binary, str(config), "--sentinel", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for client in (redis.Redis(port=port), redis.Redis(port=sentinel_port)):
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
            client.close()
        yield port, sentinel_port, str(workdir / "r.sock")
    finally:
        for process in (sentinel, server):
            process.terminate()
            process.wait(10)
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()


def test_sentinel_and_unix_socket_urls(redis_with_sentinel: tuple[int, int, str]) -> None:
    port, sentinel_port, socket_path = redis_with_sentinel
    with Connection(f"redis://127.0.0.1:{port}/3") as conn:
        queue = conn.SimpleQueue("sq")
        queue.put({"a": 1})
        queue.close()
    urls = [
        (
            f"sentinel://127.0.0.1:{free_port()};sentinel://127.0.0.1:{sentinel_port}/3",
            {"master_name": "mym"},
        ),
        (f"redis+socket://{socket_path}?virtual_host=3", {}),
    ]
    for url, options in urls:
        with RedisBroker(url, transport_options=options, timeout=1) as broker:
            assert broker.known_queues() == ["sq"], url
            assert broker.queue_stats(["sq"]).queues[0].ready == 1, url
    with pytest.raises(Unavailable, match="No master found for 'nosuch'"):
        RedisBroker(
            f"sentinel://127.0.0.1:{sentinel_port}/3", transport_options={"master_name": "nosuch"}, timeout=1
        ).known_queues()


def test_binding_set_keys_are_rescanned_after_the_ttl(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RedisBroker(redis_url, transport_options={}, timeout=1) as broker:
        assert broker.known_queues() == []
        raw = redis.Redis.from_url(redis_url)
        raw.sadd("_kombu.binding.fresh", "fresh\x06\x16\x06\x16fresh")
        raw.close()
        assert broker.known_queues() == []  # the SCAN result is reused for a few seconds
        monkeypatch.setattr(redis_broker, "BINDING_KEYS_TTL", 0.0)
        assert broker.known_queues() == ["fresh"]
