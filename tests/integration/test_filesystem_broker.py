"""FilesystemBroker against a real ``celery worker`` on kombu's filesystem transport."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from deploykit.brokers.filesystem import FilesystemBroker

pytestmark = pytest.mark.integration


@pytest.fixture
def fs_options(tmp_path: Path) -> dict[str, Any]:
    folders = {"data_folder_in": "data", "data_folder_out": "data", "control_folder": "control"}
    options = {key: str(tmp_path / "broker" / name) for key, name in folders.items()}
    options["processed_folder"] = str(tmp_path / "broker" / "processed")
    for folder in {*options.values()}:
        Path(folder).mkdir(parents=True, exist_ok=True)
    return options


def _files(folder: str) -> set[str]:
    return {p.name for p in Path(folder).iterdir()}


def test_worker_holding_eta_tasks_keeps_answering_and_files_are_read_in_place(start_workers, fs_options):
    env = {"DEPLOYKIT_TEST_TRANSPORT_OPTIONS": json.dumps(fs_options)}
    start_workers("filesystem://", [("fs1@dk-fs", ("celery",))], env=env)
    app = Celery("client", broker="filesystem://", set_as_current=False)
    app.conf.broker_transport_options = fs_options
    broker = FilesystemBroker("filesystem://", transport_options=fs_options)
    try:
        assert broker.worker_mailboxes() == ["fs1@dk-fs"]
        # More ETA tasks than the prefetch window (4): Celery raises the prefetch for each one.
        for _ in range(12):
            app.send_task("tests.apps.basic.add", args=(1, 2), queue="celery", countdown=300)
        for _ in range(3):
            app.send_task("tests.apps.basic.add", args=(1, 2), queue="reports")  # nobody consumes it
        deadline = time.monotonic() + 20
        while broker.queue_stats(["celery"]).queues[0].ready and time.monotonic() < deadline:
            time.sleep(0.2)
        report = broker.queue_stats(["celery", "reports"])
        assert [(s.name, s.ready, s.unacked, s.exists) for s in report.queues] == [
            ("celery", 0, None, True),
            ("reports", 3, None, True),
        ]
        assert app.control.ping(destination=["fs1@dk-fs"], timeout=5) == [{"fs1@dk-fs": {"ok": "pong"}}]
        scheduled = app.control.inspect(destination=["fs1@dk-fs"], timeout=5).scheduled()
        assert len(scheduled["fs1@dk-fs"]) == 12

        before = _files(fs_options["data_folder_in"])
        messages = list(broker.iter_messages("reports"))
        assert _files(fs_options["data_folder_in"]) == before
        assert [m.headers.task for m in messages] == ["tests.apps.basic.add"] * 3
        assert broker.known_queues() == ["celery", "reports"]
    finally:
        app.close()


# In `make test-faults`: a slow pin of Celery's own behaviour (an 8 s task blocking the loop).
@pytest.mark.faults
def test_worker_stops_answering_while_a_runnable_task_waits_for_a_busy_pool(start_workers, fs_options):
    """The reported limitation, pinned down: not prefetch or ETA tasks, but the blocking pool.

    Transports without event-loop support (filesystem, memory) run the worker's synchronous loop
    with a threaded prefork pool and ``putlocks`` (celery/worker/components.py ``Pool.create``:
    ``putlocks=w.pool_putlocks and threaded``): handing a task to a pool whose processes are all
    busy blocks the consumer thread, and with it remote control, until a process is free.
    """
    env = {"DEPLOYKIT_TEST_TRANSPORT_OPTIONS": json.dumps(fs_options)}
    (worker,) = start_workers("filesystem://", [("fs2@dk-fs", ("celery",))], env=env)
    app = Celery("client", broker="filesystem://", set_as_current=False)
    app.conf.broker_transport_options = fs_options
    try:
        app.send_task("tests.apps.basic.sleep", args=(8,), queue="celery")
        time.sleep(0.3)
        app.send_task("tests.apps.basic.add", args=(1, 2), queue="celery")
        deadline = time.monotonic() + 10
        while worker.log().count(" received") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.monotonic()
        assert app.control.ping(destination=["fs2@dk-fs"], timeout=2) == []
        # Once the sleep ends the loop runs again, and answers. Asked again and again rather than
        # once with a long timeout: a ping with one expected reply stops collecting after any event
        # on its reply queue (kombu's Mailbox._collect counts events, not matching replies).
        answer: list = []
        while not answer and time.monotonic() - started < 40:
            answer = app.control.ping(destination=["fs2@dk-fs"], timeout=2)
        assert answer == [{"fs2@dk-fs": {"ok": "pong"}}]
        assert time.monotonic() - started > 3
    finally:
        app.close()
