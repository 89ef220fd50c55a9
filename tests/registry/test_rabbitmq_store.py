"""The RabbitMQ store's reading rules, on a scripted management API (``httpx.MockTransport``);
the real server is in tests/integration/test_registry.py."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from deploykit.brokers.manifest_store import QUEUE_PREFIX, RabbitMQManifestStore
from deploykit.brokers.rabbitmq_api import ManagementAPI
from deploykit.brokers.urls import ManagementEndpoint
from deploykit.errors import Unavailable


def _message(data: bytes, when: float) -> dict[str, object]:
    return {
        "payload": base64.b64encode(data).decode(),
        "properties": {"headers": {"deploykit-published-at": repr(when)}},
    }


def _store(answers: list[httpx.Response], seen: list[httpx.Request]) -> RabbitMQManifestStore:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    endpoint = ManagementEndpoint("http://mq:15672", ("u", "secret"), "http://mq:15672")
    api = ManagementAPI(endpoint, transport=httpx.MockTransport(handler))
    return RabbitMQManifestStore(api, "/", sleep=lambda _: None)


def test_a_read_that_finds_the_message_held_by_another_reader_retries() -> None:
    seen: list[httpx.Request] = []
    store = _store([httpx.Response(200, json=[]), httpx.Response(200, json=[_message(b"one", 1.0)])], seen)
    assert store.read("v1") == b"one"
    assert [r.url.raw_path.decode() for r in seen] == [f"/api/queues/%2F/{QUEUE_PREFIX}v1/get"] * 2
    assert json.loads(seen[0].content)["ackmode"] == "ack_requeue_true"


def test_a_read_racing_a_publish_keeps_the_newest_message() -> None:
    answer = httpx.Response(200, json=[_message(b"old", 1.0), _message(b"new", 2.0)])
    assert _store([answer], []).read("v1") == b"new"


def test_a_missing_queue_is_no_entry_and_an_empty_one_gives_up() -> None:
    assert _store([httpx.Response(404, json={})], []).read("v1") is None
    seen: list[httpx.Request] = []
    empty = [httpx.Response(200, json=[]) for _ in range(RabbitMQManifestStore.READ_ATTEMPTS)]
    assert _store(empty, seen).read("v1") is None
    assert len(seen) == RabbitMQManifestStore.READ_ATTEMPTS


def test_a_refusal_names_the_tag_and_permissions_and_no_password() -> None:
    with pytest.raises(Unavailable) as caught:
        _store([httpx.Response(403, json={})], []).read("v1")
    assert "'management' tag" in caught.value.message and "secret" not in caught.value.message


def test_publish_declares_the_bounded_queue_then_publishes_to_the_default_exchange() -> None:
    seen: list[httpx.Request] = []
    store = _store(
        [httpx.Response(201), httpx.Response(200, json={"routed": True})],
        seen,
    )
    store.write("v1", b"data", 12.5)
    declare, publish = seen
    assert declare.method == "PUT" and json.loads(declare.content)["arguments"]["x-max-length"] == 1
    body = json.loads(publish.content)
    assert publish.url.raw_path.decode() == "/api/exchanges/%2F/amq.default/publish"
    assert body["routing_key"] == QUEUE_PREFIX + "v1" and base64.b64decode(body["payload"]) == b"data"
    assert body["properties"]["delivery_mode"] == 2


def test_an_unrouted_publish_is_an_error() -> None:
    store = _store([httpx.Response(204), httpx.Response(200, json={"routed": False})], [])
    with pytest.raises(Unavailable, match="did not take the manifest"):
        store.write("v1", b"data", 1.0)
