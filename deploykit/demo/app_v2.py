"""The demo's "release 2": the same shop with changes that look harmless in a code review.

- ``shop.send_invoice``: ``amount`` and ``order_id`` swapped places (old positional messages
  would bind to the wrong parameters and bill order 99.5 for 1001 euros);
- ``shop.send_welcome_email``: a required ``locale`` parameter was added (old messages fail);
- ``shop.cleanup_carts``: removed (old messages are discarded as unregistered);
- ``shop.build_report``: unchanged.
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
    broker_transport_options={"visibility_timeout": 600},
    task_acks_late=True,
)


@app.task(name="shop.send_welcome_email")
def send_welcome_email(user_id: int, locale: str, template: str = "welcome") -> str:
    return f"sent {template} ({locale}) to user {user_id}"


@app.task(name="shop.send_invoice")
def send_invoice(amount: float, order_id: int, currency: str = "EUR") -> str:
    return f"invoice {order_id}: {amount} {currency}"


@app.task(name="shop.build_report")
def build_report(account_id: int, period: str) -> str:
    time.sleep(4)
    return f"report {account_id}/{period}"
