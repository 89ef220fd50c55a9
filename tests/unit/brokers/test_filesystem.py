"""FilesystemBroker against folders written by kombu's own filesystem transport."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Queue

from deploykit.brokers.filesystem import FilesystemBroker, queue_of
from deploykit.errors import UsageError


@pytest.fixture
def options(tmp_path: Path) -> dict[str, Any]:
    for name in ("data", "control", "processed"):
        (tmp_path / name).mkdir()
    return {
        "data_folder_in": str(tmp_path / "data"),
        "data_folder_out": str(tmp_path / "data"),
        "control_folder": str(tmp_path / "control"),
        "processed_folder": str(tmp_path / "processed"),
    }


def make_app(options: dict[str, Any]) -> Celery:
    app = Celery("unit-fs", broker="filesystem://", set_as_current=False)
    app.conf.broker_transport_options = options
    return app


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def consume_order(options: dict[str, Any], queue: str) -> list[str]:
    ids = []
    with Connection("filesystem://", transport_options=options) as conn:
        bound = Queue(queue)(conn.channel())
        while (message := bound.get(no_ack=True)) is not None:
            ids.append(message.headers["id"])
    return ids


def test_queue_of_follows_kombu_file_names() -> None:
    assert queue_of("1234_0f0e.celery.msg") == "celery"
    assert queue_of("1234_0f0e.w1@host.celery.pidbox.msg") == "w1@host.celery.pidbox"
    assert queue_of("notes.txt") is None


def test_counts_listing_and_order_without_touching_a_file(options: dict[str, Any], tmp_path: Path) -> None:
    app = make_app(options)
    ids = [str(app.send_task("tasks.add", args=(i, i), queue="celery").id) for i in range(7)]
    app.send_task("tasks.mail", args=("x",), queue="emails")
    broker = FilesystemBroker("filesystem://", transport_options=options)

    before = snapshot(tmp_path)
    report = broker.queue_stats(["celery", "emails", "nosuch"])
    assert report.source == "filesystem" and "workers' memory" in report.notes[0]
    rows = {s.name: (s.ready, s.unacked, s.unacked_eta, s.exists) for s in report.queues}
    assert rows == {
        "celery": (7, None, None, True),
        "emails": (1, None, None, True),
        "nosuch": (0, None, None, False),
    }
    assert broker.known_queues() == ["celery", "emails"]
    messages = list(broker.iter_messages("celery"))
    assert snapshot(tmp_path) == before

    # Not publish order: kombu names files '{ms}_{uuid4}', so within one millisecond the order is
    # random; what matters is the order kombu's consumer takes them in (checked below).
    assert sorted(m.headers.id for m in messages) == sorted(ids)
    first = messages[0]
    assert (first.location, first.queue, first.body_encoding, first.content_type) == (
        "ready",
        "celery",
        None,  # the base64 body comes decoded
        "application/json",
    )
    assert isinstance(first.body, bytes) and len(json.loads(first.body)) == 3
    assert first.size > 500 and first.delivery_tag
    assert [m.headers.id for m in messages] == consume_order(options, "celery")
    assert broker.queue_stats(["celery"]).queues[0].ready == 0


def test_worker_mailboxes_from_the_pidbox_exchange_file(options: dict[str, Any]) -> None:
    broker = FilesystemBroker("filesystem://", transport_options=options)
    assert broker.worker_mailboxes() is None
    control = Path(options["control_folder"])
    (control / "celery.pidbox.exchange").write_text(
        '[["", "", "w2@h.celery.pidbox"], ["", "", "w1@h.celery.pidbox"]]'
    )
    assert broker.worker_mailboxes() == ["w1@h", "w2@h"]
    assert broker.known_queues() == []  # mailboxes are internal queues
    assert broker.settings().visibility_timeout is None


def test_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    broker = FilesystemBroker("filesystem://", transport_options={"data_folder_in": str(tmp_path / "nope")})
    with pytest.raises(UsageError, match=r"data_folder_in .*nope.* does not exist"):
        broker.queue_stats(["celery"])
    with pytest.raises(UsageError):
        list(broker.iter_messages("celery"))
    assert broker.queue_stats([]).queues == ()
