"""A test app whose tasks write every execution (id, worker, time) to a ledger file outside the broker.

Broker from DEPLOYKIT_TEST_BROKER, ledger path from DEPLOYKIT_TEST_LEDGER. One ``O_APPEND`` write
per execution, so concurrent workers never interleave lines.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

app = Celery("ledger", broker=os.environ.get("DEPLOYKIT_TEST_BROKER", "memory://"))
app.conf.update(
    task_default_queue="celery",
    worker_prefetch_multiplier=int(os.environ.get("DEPLOYKIT_TEST_PREFETCH", "4")),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


def _write(task: Any, seconds: float) -> None:
    time.sleep(seconds)
    entry = {"id": task.request.id, "worker": task.request.hostname, "time": time.time()}
    fd = os.open(os.environ["DEPLOYKIT_TEST_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


@app.task(bind=True)
def record(self: Any, seconds: float = 0.0) -> None:
    """acks_late=False: acknowledged when it starts (at most once)."""
    _write(self, seconds)


@app.task(bind=True, acks_late=True)
def record_late(self: Any, seconds: float = 0.0) -> None:
    """acks_late=True: acknowledged when it ends (at least once)."""
    _write(self, seconds)
