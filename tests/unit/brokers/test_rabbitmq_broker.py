"""RabbitMQBroker without a server: httpx's MockTransport for the management API, a fake prober
for AMQP passive declares, and real amqp exception objects for the error translation."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
import pytest
from amqp import exceptions as amqp_errors

from deploykit.brokers.base import DelayedStore
from deploykit.brokers.rabbitmq import (
    DEFAULT_CONSUMER_TIMEOUT,
    Declared,
    RabbitMQBroker,
)
from deploykit.brokers.urls import management_endpoint, vhost_of
from deploykit.errors import Refused, Unavailable, UsageError

URL = "amqp://app:s3cr3t@rabbit.example:5672/prod"
MGMT = "http://app:s3cr3t@rabbit.example:15672/"


class FakeProber:
    """Answers passive declares from a table; a name not in it is NOT_FOUND."""

    def __init__(self, queues: Mapping[str, tuple[int, int]], fail_after: int | None = None) -> None:
        self.queues = dict(queues)
        self.declared: list[str] = []
        self.closed = False
        self.fail_after = fail_after

    def declare(self, name: str) -> Declared:
        if self.fail_after is not None and len(self.declared) >= self.fail_after:
            raise ConnectionResetError(104, "Connection reset by peer")
        self.declared.append(name)
        if name not in self.queues:
            return Declared(exists=False)
        ready, consumers = self.queues[name]
        return Declared(exists=True, ready=ready, consumers=consumers)

    def close(self) -> None:
        self.closed = True


def row(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "classic", "arguments": {}, **fields}


def api(
    queues: Iterable[Mapping[str, Any]] = (),
    *,
    status: int = 200,
    requests: list[httpx.Request] | None = None,
    page_size: int | None = None,
    extra: Mapping[str, httpx.Response] | None = None,
) -> httpx.MockTransport:
    """A management API holding ``queues``; ``extra`` maps paths to canned answers."""
    rows = list(queues)

    def handle(request: httpx.Request) -> httpx.Response:
        if requests is not None:
            requests.append(request)
        path = request.url.raw_path.decode().split("?")[0]
        if extra and path in extra:
            return extra[path]
        if status != 200:
            return httpx.Response(status, json={"error": "x", "reason": "y"})
        size = page_size or int(request.url.params.get("page_size", "100"))
        page = int(request.url.params.get("page", "1"))
        items = rows[(page - 1) * size : page * size]
        pages = (len(rows) + size - 1) // size
        return httpx.Response(200, json={"items": items, "page": page, "page_count": pages})

    return httpx.MockTransport(handle)


def broker(
    transport: httpx.BaseTransport | None = None,
    prober: FakeProber | Callable[[], FakeProber] | None = None,
    **kwargs: Any,
) -> RabbitMQBroker:
    factory: Callable[[], Any]
    if callable(prober):
        factory = prober
    else:
        fixed = prober or FakeProber({})
        factory = lambda: fixed  # noqa: E731
    kwargs.setdefault("management_url", MGMT)
    return RabbitMQBroker(URL, http_transport=transport, probe_factory=factory, **kwargs)


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://guest:guest@localhost:5672/", "/"),
        ("amqp://guest:guest@localhost:5672", "/"),
        ("amqp://guest:guest@localhost:5672//", "/"),
        ("amqp://localhost/%2F", "/"),
        ("amqp://u:p@h:5672/myvhost", "myvhost"),
        ("pyamqp://u:p@h/my%20vhost?heartbeat=10", "my vhost"),
        ("amqp://h/team%2Fprod", "team/prod"),
        ("amqp://h/one;amqp://h2/two", "one"),
    ],
)
def test_vhost_of(url: str, vhost: str) -> None:
    assert vhost_of(url) == vhost


def test_management_endpoint_keeps_path_prefix_and_splits_credentials() -> None:
    ep = management_endpoint("https://ops:p%40ss@mq.example:15671/rabbitmq/", URL)
    assert ep.base_url == "https://mq.example:15671/rabbitmq"
    assert ep.auth == ("ops", "p@ss")
    assert ep.display_url == "https://ops:***@mq.example:15671/rabbitmq/"


def test_management_endpoint_borrows_broker_credentials() -> None:
    assert management_endpoint("http://mq:15672", URL).auth == ("app", "s3cr3t")
    assert management_endpoint("http://mq:15672", "amqp://mq//").auth == ("guest", "guest")
    assert management_endpoint("http://[::1]:15672/", URL).base_url == "http://[::1]:15672"


@pytest.mark.parametrize("bad", ["ftp://mq:15672/", "mq:15672", "http://:15672/", "http://mq:99999999/"])
def test_management_endpoint_rejects_invalid_urls(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid management URL"):
        management_endpoint(bad, URL)


def test_queue_list_request_is_one_paginated_call_with_columns_and_encoded_vhost() -> None:
    seen: list[httpx.Request] = []
    b = RabbitMQBroker(
        "amqp://guest:guest@mq:5672//",
        management_url="http://guest:guest@mq:15672/",
        http_transport=api([row("celery")], requests=seen),
        probe_factory=lambda: FakeProber({}),
    )
    assert b.known_queues() == ["celery"]
    assert len(seen) == 1
    request = seen[0]
    assert request.url.raw_path.startswith(b"/api/queues/%2F?")
    assert request.url.params["columns"].split(",") == [
        "name",
        "type",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "arguments",
        "policy",
        "state",
    ]
    assert request.url.params["pagination"] == "true"
    assert request.headers["authorization"].startswith("Basic ")


def test_pagination_reads_every_page() -> None:
    rows = [row(f"q{i:03}") for i in range(7)]
    seen: list[httpx.Request] = []
    b = broker(api(rows, page_size=3, requests=seen))
    assert b.known_queues() == [f"q{i:03}" for i in range(7)]
    assert [r.url.params["page"] for r in seen] == ["1", "2", "3"]


def test_known_queues_leaves_out_internal_delayed_and_server_named_queues() -> None:
    names = [
        "celery",
        "emails",
        "w1@host.celery.pidbox",
        "4f1c.reply.celery.pidbox",
        "celeryev.1234",
        "celery_delayed_0",
        "celery_delayed_27",
        "myapp_celery_delayed_3",
        "amq.gen-XYZ",
    ]
    b = broker(api([row(n) for n in names]))
    assert b.known_queues() == ["celery", "emails"]


def test_worker_mailboxes_are_node_names_of_pidbox_queues() -> None:
    names = [
        "celery",
        "w1@host.celery.pidbox",
        "w2@other.example.celery.pidbox",
        "w3@host.myctl.pidbox",
        "4f1c2a.reply.celery.pidbox",
        "reply.celery.pidbox",
    ]
    b = broker(api([row(n) for n in names]))
    assert b.worker_mailboxes() == ["w1@host", "w2@other.example"]
    assert b.worker_mailboxes("myctl") == ["w3@host"]


def test_queue_stats_takes_ready_and_consumers_from_amqp_and_the_rest_from_the_api() -> None:
    rows = [
        row(
            "celery",
            type="quorum",
            messages_ready=9,  # stale: AMQP says 2
            messages_unacknowledged=5,
            consumers=3,
            arguments={"x-queue-type": "quorum", "x-consumer-timeout": 3_600_000},
        ),
        row("emails"),  # just declared: the API has no counters for it yet
        row("celery_delayed_0", type="quorum", messages_ready=1),
        row("celery_delayed_5", type="quorum", messages_ready=0),
    ]
    prober = FakeProber(
        {"celery": (2, 1), "emails": (4, 0), "celery_delayed_0": (1, 0), "celery_delayed_5": (3, 0)}
    )
    report = broker(api(rows), prober).queue_stats(["celery", "emails", "missing"])
    celery, emails, missing = report.queues
    assert (celery.ready, celery.unacked, celery.consumers, celery.queue_type) == (2, 5, 1, "quorum")
    assert celery.arguments["x-consumer-timeout"] == 3_600_000
    assert celery.unacked_eta is None
    assert (emails.ready, emails.unacked, emails.consumers, emails.queue_type) == (4, None, 0, "classic")
    assert not missing.exists and missing.ready is None and missing.unacked is None
    assert report.source == "management-api"
    assert report.notes == ()
    assert report.delayed == DelayedStore(queues=("celery_delayed_0", "celery_delayed_5"), messages=4)
    assert prober.declared == ["celery", "emails", "missing", "celery_delayed_0", "celery_delayed_5"]


def test_a_queue_that_cannot_deliver_gets_a_note() -> None:
    rows = [row("celery", type="quorum", state="minority"), row("emails", state="running")]
    report = broker(api(rows), FakeProber({"celery": (5, 0), "emails": (0, 1)})).queue_stats(
        ["celery", "emails"]
    )
    assert report.notes == ("queue celery is in state 'minority' (management API): consumers get nothing",)


def test_no_delayed_queues_means_no_delayed_store() -> None:
    report = broker(api([row("celery")]), FakeProber({"celery": (0, 1)})).queue_stats(["celery"])
    assert report.delayed is None


def test_a_queue_deleted_since_the_listing_does_not_exist() -> None:
    report = broker(api([row("celery", messages_ready=3)]), FakeProber({})).queue_stats(["celery"])
    assert not report.queues[0].exists


def test_fallback_when_the_api_is_unreachable_says_so_and_masks_the_password() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    prober = FakeProber({"celery": (3, 1)})
    b = broker(httpx.MockTransport(refuse), prober)
    report = b.queue_stats(["celery", "gone"])
    celery, gone = report.queues
    assert (celery.ready, celery.unacked, celery.consumers, celery.queue_type) == (3, None, 1, None)
    assert not gone.exists
    assert report.source == "amqp-passive"
    assert report.notes == (
        "management API unreachable at http://app:***@rabbit.example:15672/ (connection refused): "
        "showing ready counts from AMQP only; unacked unknown",
    )
    assert "s3cr3t" not in repr(report)
    assert report.delayed is None  # celery_delayed_27 was probed and is absent
    assert b.known_queues() == []
    assert b.worker_mailboxes() is None


def test_fallback_finds_default_named_delayed_queues_by_probing() -> None:
    levels = {f"celery_delayed_{n}": (1 if n in (3, 8) else 0, 0) for n in range(28)}
    b = broker(api(status=503), FakeProber({"celery": (0, 1), **levels}))
    report = b.queue_stats(["celery"])
    assert report.delayed is not None
    assert report.delayed.messages == 2
    assert report.delayed.queues == tuple(f"celery_delayed_{n}" for n in range(28))
    assert report.delayed.note and "without the management API" in report.delayed.note
    assert report.notes[0].startswith(
        "management API at http://app:***@rabbit.example:15672/ answered HTTP 503"
    )


def test_fallback_on_401_names_the_credentials_and_is_not_retried() -> None:
    seen: list[httpx.Request] = []
    b = broker(api(status=401, requests=seen), FakeProber({"celery": (0, 0)}))
    first = b.queue_stats(["celery"])
    b.queue_stats(["celery"])
    assert b.known_queues() == []
    assert "rejected the credentials (HTTP 401" in first.notes[0]
    assert first.notes[0].endswith("showing ready counts from AMQP only; unacked unknown")
    assert first.queues[0].unacked is None
    assert len(seen) == 1


def test_timeout_and_non_json_answers_fall_back() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    report = broker(httpx.MockTransport(slow)).queue_stats([])
    assert "(no answer within 5s)" in report.notes[0]
    html = httpx.MockTransport(lambda r: httpx.Response(200, text="<html>hello</html>"))
    assert "did not answer JSON" in broker(html).queue_stats([]).notes[0]


def test_unknown_vhost_on_the_api_is_a_usage_error() -> None:
    transport = api(
        status=404,
        extra={
            "/api/vhosts/prod": httpx.Response(404, json={}),
            "/api/overview": httpx.Response(200, json={}),
        },
    )
    with pytest.raises(UsageError, match="virtual host 'prod' does not exist"):
        broker(transport).known_queues()


def test_404_from_something_that_is_not_the_api_falls_back() -> None:
    report = broker(api(status=404)).queue_stats([])
    assert "answered HTTP 404 (is it the RabbitMQ management API?)" in report.notes[0]


def test_no_management_url_derives_one_from_the_broker_url() -> None:
    b = RabbitMQBroker(URL, management_url=None, probe_factory=lambda: FakeProber({}))
    assert b.management is not None
    assert b.management.base_url == "http://rabbit.example:15672"
    assert b.management.auth == ("app", "s3cr3t")
    assert b.display_url == "amqp://app:***@rabbit.example:5672/prod"


def test_a_dead_reused_connection_is_replaced_once() -> None:
    made: list[FakeProber] = []

    def factory() -> FakeProber:
        made.append(FakeProber({"celery": (1, 1)}, fail_after=1 if not made else None))
        return made[-1]

    b = broker(api([row("celery")]), factory)
    assert b.queue_stats(["celery"]).queues[0].ready == 1
    assert b.queue_stats(["celery"]).queues[0].ready == 1  # first prober dies, second answers
    assert len(made) == 2 and made[0].closed


def test_a_fresh_connection_that_fails_is_unavailable() -> None:
    b = broker(api([row("celery")]), FakeProber({}, fail_after=0))
    with pytest.raises(Unavailable, match=r"cannot reach broker amqp://app:\*\*\*@rabbit.example:5672/prod"):
        b.queue_stats(["celery"])


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (
            amqp_errors.AccessRefused(
                "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN", (0, 0), ""
            ),
            UsageError,
            "rejected the credentials: ACCESS_REFUSED",
        ),
        (
            amqp_errors.NotAllowed("NOT_ALLOWED - vhost prod not found", (10, 40), "Connection.open"),
            UsageError,
            "cannot open virtual host 'prod': NOT_ALLOWED - vhost prod not found",
        ),
        (ConnectionRefusedError(111, "Connection refused"), Unavailable, "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), Unavailable, "'rabbit.example' does not resolve"),
        (TimeoutError("timed out"), Unavailable, "timed out (connect 2s, read 5s)"),
        (OSError("Server unexpectedly closed connection s3cr3t"), Unavailable, "closed connection ***"),
    ],
)
def test_amqp_errors_become_deploykit_errors_without_the_password(
    exc: BaseException, kind: type[Exception], text: str
) -> None:
    def factory() -> FakeProber:
        raise exc

    b = RabbitMQBroker(URL, management_url=MGMT, http_transport=api([]), probe_factory=factory)
    with pytest.raises(kind) as caught:
        b.queue_stats(["celery"])
    assert text in caught.value.message
    assert "s3cr3t" not in caught.value.message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_settings_consumer_timeout_from_config_or_rabbitmq_default() -> None:
    default = broker().settings()
    assert (default.consumer_timeout, default.consumer_timeout_source) == (
        DEFAULT_CONSUMER_TIMEOUT,
        "default",
    )
    assert default.consumer_timeout == 1800.0
    assert default.visibility_timeout is None
    configured = broker(consumer_timeout="1h30m").settings()
    assert (configured.consumer_timeout, configured.consumer_timeout_source) == (5400.0, "config")
    assert broker(consumer_timeout=90).settings().consumer_timeout == 90.0
    with pytest.raises(UsageError, match="invalid consumer_timeout"):
        broker(consumer_timeout="soon")


def test_iter_messages_is_refused_rabbitmq_has_no_peek() -> None:
    with pytest.raises(Refused, match="rabbitmq brokers cannot list waiting messages"):
        next(broker().iter_messages("celery"))


def test_close_releases_the_prober_and_the_http_client() -> None:
    prober = FakeProber({"celery": (0, 0)})
    with broker(api([row("celery")]), prober) as b:
        b.queue_stats(["celery"])
    assert prober.closed
