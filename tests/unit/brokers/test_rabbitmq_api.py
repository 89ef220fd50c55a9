"""The management-API client (deploykit.brokers.rabbitmq_api) against httpx's mock transport."""

from __future__ import annotations

import json

import httpx
import pytest

from deploykit.brokers.rabbitmq_api import ManagementAPI, ManagementDown, NoSuchVhost
from deploykit.brokers.urls import management_endpoint

ENDPOINT = management_endpoint("http://ops:s3cret@rabbit:15672/prefix/", "amqp://rabbit//")


def client(handler, **kwargs) -> ManagementAPI:
    return ManagementAPI(ENDPOINT, transport=httpx.MockTransport(handler), **kwargs)


def test_queues_are_read_page_by_page_up_to_the_limit() -> None:
    pages: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.raw_path.split(b"?")[0] == b"/prefix/api/queues/%2Fprod"
        assert request.url.params["columns"] == "name,type"
        page = int(request.url.params["page"])
        pages.append(request.url.params["page"])
        items = [{"name": f"q{page}"}, "not a row"]
        return httpx.Response(200, json={"items": items, "page_count": 5})

    assert [r["name"] for r in client(handler).list_queues("/prod", "name,type", max_pages=3)] == [
        "q1",
        "q2",
        "q3",
    ]
    assert pages == ["1", "2", "3"]


def test_a_404_is_a_missing_vhost_only_when_the_api_says_so() -> None:
    def knows_no_vhost(request: httpx.Request) -> httpx.Response:
        return (
            httpx.Response(200, json={})
            if request.url.path.endswith("/api/overview")
            else httpx.Response(404)
        )

    with pytest.raises(NoSuchVhost):
        client(knows_no_vhost).list_queues("nope", "name")

    with pytest.raises(ManagementDown) as caught:
        client(lambda r: httpx.Response(404)).list_queues("/", "name")
    assert caught.value.status == 404 and "is it the RabbitMQ management API?" in caught.value.problem


def test_failures_name_the_endpoint_without_its_password() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out for ops:s3cret")

    with pytest.raises(ManagementDown) as caught:
        client(refused).list_queues("/", "name")
    assert caught.value.problem == "unreachable at http://ops:***@rabbit:15672/prefix/ (connection refused)"
    assert caught.value.reason == "connection refused" and caught.value.status is None

    with pytest.raises(ManagementDown) as caught:
        client(slow, timeout=httpx.Timeout(7.0, connect=1.0)).request("GET", "/api/overview")
    assert caught.value.problem.endswith("(no answer within 7s)")
    assert "s3cret" not in caught.value.reason

    with pytest.raises(ManagementDown) as caught:
        client(lambda r: httpx.Response(200, text="<html>")).list_queues("/", "name")
    assert caught.value.reason == "the management API did not answer JSON"


def test_messages_are_sampled_with_requeue_and_quoted_names() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[{"payload": "e30="}, 3])

    assert client(handler).get_messages("/", "a/b", 2) == [{"payload": "e30="}]
    (request,) = seen
    assert request.method == "POST" and request.url.raw_path == b"/prefix/api/queues/%2F/a%2Fb/get"
    # Compared as data: httpx's JSON spacing differs between releases (0.23 puts spaces).
    assert json.loads(request.read()) == {"count": 2, "ackmode": "ack_requeue_true", "encoding": "base64"}


def test_global_parameters_round_trip() -> None:
    store: dict[str, object] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        if request.method == "PUT":
            store[name] = httpx.Response(200, content=request.read()).json()
            return httpx.Response(201)
        if request.method == "DELETE":
            return httpx.Response(204) if store.pop(name, None) else httpx.Response(404)
        return httpx.Response(200, json=store[name]) if name in store else httpx.Response(404)

    api = client(handler)
    assert api.global_parameter("p") is None
    api.set_global_parameter("p", {"n": 1})
    assert api.global_parameter("p") == {"n": 1}
    api.delete_global_parameter("p")
    api.delete_global_parameter("p")  # already gone: fine
    assert store == {}
    with pytest.raises(ManagementDown) as caught:
        client(lambda r: httpx.Response(403)).set_global_parameter("p", 1)
    assert caught.value.status == 403
