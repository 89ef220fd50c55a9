"""A small Celery app for integration tests; the broker comes from DEPLOYKIT_TEST_BROKER.

Tasks are ``shared=False``: tests load this module more than once in one process, and shared
tasks would be registered again on every app created afterwards.
"""

from __future__ import annotations

import os
import time

from celery import Celery
from kombu import Exchange, Queue

app = Celery("basic", broker=os.environ.get("DEPLOYKIT_TEST_BROKER", "memory://"))
app.conf.update(
    task_default_queue="celery",
    worker_prefetch_multiplier=int(os.environ.get("DEPLOYKIT_TEST_PREFETCH", "4")),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_queues=[
        Queue("celery", Exchange("celery", type="direct"), routing_key="celery"),
        Queue("emails", Exchange("emails", type="direct"), routing_key="emails"),
        Queue("reports", Exchange("reports", type="direct"), routing_key="reports"),
    ],
    task_routes={"tests.apps.basic.send_email": {"queue": "emails"}},
)
if os.environ.get("DEPLOYKIT_TEST_QUORUM"):
    # RabbitMQ quorum queues + native delayed delivery (Celery 5.5+): ETA tasks wait in the
    # broker's celery_delayed_* queues, which needs a topic exchange.
    app.conf.update(
        task_default_exchange_type="topic",
        task_queues=[
            Queue(
                "celery",
                Exchange("celery", type="topic"),
                routing_key="celery",
                queue_arguments={"x-queue-type": "quorum"},
            ),
            Queue(
                "emails",
                Exchange("emails", type="topic"),
                routing_key="emails",
                queue_arguments={"x-queue-type": "quorum"},
            ),
        ],
        broker_transport_options={"confirm_publish": True},
    )
if os.environ.get("DEPLOYKIT_TEST_TRANSPORT_OPTIONS"):
    import json

    app.conf.broker_transport_options = json.loads(os.environ["DEPLOYKIT_TEST_TRANSPORT_OPTIONS"])


@app.task(shared=False)
def add(x: int, y: int) -> int:
    return x + y


@app.task(shared=False)
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(shared=False)
def send_email(to: str, subject: str = "hello") -> str:
    return f"{to}:{subject}"
