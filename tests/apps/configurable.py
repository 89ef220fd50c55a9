"""A Celery app whose settings come from the environment, for doctor and probe tests.

``DEPLOYKIT_TEST_BROKER`` is the broker; ``DEPLOYKIT_TEST_SETTINGS`` a JSON object of Celery
settings applied on top (the same module is imported by the workers and by deploykit, so a test
can give them different settings to create drift).
"""

from __future__ import annotations

import json
import os
import time

from celery import Celery
from kombu import Exchange, Queue

app = Celery("configurable", broker=os.environ.get("DEPLOYKIT_TEST_BROKER", "memory://"))
app.conf.update(
    task_default_queue="celery",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_queues=[
        Queue("celery", Exchange("celery", type="direct"), routing_key="celery"),
        Queue("emails", Exchange("emails", type="direct"), routing_key="emails"),
    ],
)
if os.environ.get("DEPLOYKIT_TEST_QUORUM_DIRECT"):
    # Quorum queues on direct exchanges: Celery skips native delayed delivery for them, so ETA
    # tasks stay in worker memory (celery/app/base.py, Celery.send_task) — what doctor must point out.
    app.conf.task_queues = [
        Queue(
            "celery",
            Exchange("celery", type="direct"),
            routing_key="celery",
            queue_arguments={"x-queue-type": "quorum"},
        ),
    ]
app.conf.update(json.loads(os.environ.get("DEPLOYKIT_TEST_SETTINGS") or "{}"))


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
