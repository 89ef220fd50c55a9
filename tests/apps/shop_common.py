"""Shared set-up for the two releases of the scan test app (tests/apps/shop_v1.py, shop_v2.py).

Every task records what it received in a Redis list (the ledger, outside the broker's queues), so
a test can compare the scan's predictions with what really ran.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery
from kombu import Queue


def make_app(name: str) -> Celery:
    broker = os.environ.get("DEPLOYKIT_TEST_BROKER", "memory://")
    app = Celery(name, broker=broker, backend=os.environ.get("DEPLOYKIT_TEST_BACKEND") or None)
    app.conf.update(
        task_queues=[Queue("celery"), Queue("emails")],
        task_routes={"shop.email": {"queue": "emails"}},
        worker_prefetch_multiplier=10,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=600,
    )
    return app


def record(task: str, **bound: Any) -> None:
    """Append what a task received to the ledger list ``ledger`` on the result backend's Redis."""
    import redis

    url = os.environ.get("DEPLOYKIT_TEST_BACKEND")
    if url:
        client = redis.Redis.from_url(url)
        client.rpush("ledger", json.dumps({"task": task, **bound}, default=repr))
        client.close()
