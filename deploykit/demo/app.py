"""The demo's Celery app ("release 1"): a small shop that sends e-mails and builds reports.

The broker comes from ``DEPLOYKIT_DEMO_BROKER`` (the demo points it at its embedded Redis).
"""

from __future__ import annotations

import os
import time

from celery import Celery
from kombu import Queue

app = Celery("shop", broker=os.environ.get("DEPLOYKIT_DEMO_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_queues=[Queue("celery"), Queue("emails")],
    task_routes={"shop.send_welcome_email": {"queue": "emails"}, "shop.send_invoice": {"queue": "emails"}},
    worker_prefetch_multiplier=2,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # A visibility timeout shorter than the longest countdown this shop uses: a classic way to
    # run a task twice. `deploykit scheduled` and `deploykit status` flag it.
    broker_transport_options={"visibility_timeout": 600},
    task_acks_late=True,
)


@app.task(name="shop.send_welcome_email")
def send_welcome_email(user_id: int, template: str = "welcome") -> str:
    return f"sent {template} to user {user_id}"


@app.task(name="shop.send_invoice")
def send_invoice(order_id: int, amount: float, currency: str = "EUR") -> str:
    return f"invoice {order_id}: {amount} {currency}"


@app.task(name="shop.build_report")
def build_report(account_id: int, period: str) -> str:
    time.sleep(4)
    return f"report {account_id}/{period}"


@app.task(name="shop.cleanup_carts", bind=True)
def cleanup_carts(self: object, older_than_days: int = 30) -> int:
    return older_than_days
