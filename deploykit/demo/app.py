"""The demo's Celery app ("release 1"): a small shop that sends e-mails and builds reports.

The broker comes from ``DEPLOYKIT_DEMO_BROKER`` (the demo points it at its embedded Redis).
"""

from __future__ import annotations

import time

from deploykit.demo.shop import make_app

app = make_app()


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
