"""Release 1 of the scan test app."""

from __future__ import annotations

from tests.apps.shop_common import make_app, record

app = make_app("shop_v1")
app.conf.beat_schedule = {
    "nightly-report": {"task": "shop.report", "schedule": 86400, "args": (7,)},
    "hourly-notify": {"task": "shop.notify", "schedule": 3600, "args": (1,)},
}


@app.task(name="shop.charge", shared=False)
def charge(order_id, amount):
    record("shop.charge", order_id=order_id, amount=amount)


@app.task(name="shop.notify", shared=False)
def notify(user_id):
    record("shop.notify", user_id=user_id)


@app.task(name="shop.report", shared=False)
def report(account, period="month"):
    record("shop.report", account=account, period=period)
    return account


@app.task(name="shop.email", shared=False)
def email(to, subject="hi"):
    record("shop.email", to=to, subject=subject)


@app.task(name="shop.legacy_sync", shared=False)
def legacy_sync(account):
    record("shop.legacy_sync", account=account)
