"""The demo's "release 2": the same shop with changes that look harmless in a code review.

- ``shop.send_invoice``: ``amount`` and ``order_id`` swapped places (old positional messages
  would bind to the wrong parameters and bill order 99.5 for 1001 euros);
- ``shop.send_welcome_email``: a required ``locale`` parameter was added (old messages fail);
- ``shop.cleanup_carts``: removed (old messages are discarded as unregistered);
- ``shop.build_report``: unchanged.
"""

from __future__ import annotations

import time

from deploykit.demo.shop import make_app

app = make_app()


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
