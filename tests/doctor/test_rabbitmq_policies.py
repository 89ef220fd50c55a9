"""The management-API policy reader, against httpx's mock transport."""

from __future__ import annotations

import httpx

from deploykit.brokers.rabbitmq_policies import QueuePolicy, read_queue_policies, vhost_of


def test_effective_policies_per_queue() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json=[
                {
                    "name": "celery",
                    "policy": "ct",
                    "effective_policy_definition": {"consumer-timeout": 60000},
                },
                {
                    "name": "emails",
                    "policy": None,
                    "operator_policy": "op",
                    "effective_policy_definition": {},
                },
                {"name": "plain"},
            ],
        )

    found, why_not = read_queue_policies(
        "http://u:p%40ss@rabbit:15672/", "amqp://u:p@rabbit:5672/prod", transport=httpx.MockTransport(handler)
    )
    assert why_not is None and found is not None
    assert found["celery"] == QueuePolicy("celery", "ct", {"consumer-timeout": 60000})
    assert found["emails"].policy == "op"
    assert found["plain"] == QueuePolicy("plain", None, {})
    (request,) = seen
    assert request.url.path == "/api/queues/prod"
    assert request.headers["authorization"].startswith("Basic ")


def test_unreachable_management_api_is_a_note_not_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "not_authorised"})

    found, why_not = read_queue_policies(
        "http://rabbit:15672", "amqp://rabbit//", transport=httpx.MockTransport(handler)
    )
    assert found is None and why_not and "not read" in why_not


def test_vhost_of() -> None:
    assert vhost_of("amqp://h//") == "/"
    assert vhost_of("amqp://h") == "/"
    assert vhost_of("amqp://h/%2Fprod") == "/prod"


def test_policies_are_read_page_by_page_and_a_failure_names_its_cause() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        return httpx.Response(200, json={"items": [{"name": f"q{page}", "policy": "p"}], "page_count": 2})

    found, why_not = read_queue_policies(
        "http://rabbit:15672", "amqp://rabbit//", transport=httpx.MockTransport(handler)
    )
    assert why_not is None and found is not None and sorted(found) == ["q1", "q2"]

    found, why_not = read_queue_policies(
        "http://u:s3cret@rabbit:15672",
        "amqp://rabbit//",
        transport=httpx.MockTransport(lambda r: httpx.Response(401)),
    )
    assert found is None and why_not is not None
    assert why_not.startswith("RabbitMQ policies not read: management API at http://u:***@rabbit:15672")
    assert "rejected the credentials" in why_not and "s3cret" not in why_not
