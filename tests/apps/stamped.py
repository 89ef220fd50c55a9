"""A Celery app with deploykit's stamping installed (build ``DEPLOYKIT_TEST_BUILD``, default "A");
the broker comes from DEPLOYKIT_TEST_BROKER.

Its task ``fan_out`` calls a task, parking the child message in the queue ``parked`` (which no
test worker consumes) so a test can read the child's headers from the broker.
"""

from __future__ import annotations

import os

from celery import Celery

from deploykit.celery import install

app = Celery("stamped", broker=os.environ.get("DEPLOYKIT_TEST_BROKER", "memory://"))
app.conf.update(
    task_default_queue="celery",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
install(app, build=os.environ.get("DEPLOYKIT_TEST_BUILD", "A"))


@app.task(shared=False)
def add(x: int, y: int) -> int:
    return x + y


@app.task(shared=False)
def fan_out(n: int) -> str:
    return str(add.apply_async((n, n), queue="parked").id)
