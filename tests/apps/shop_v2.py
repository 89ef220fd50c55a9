"""Release 2 of the scan test app: realistic breaking changes against release 1.

- shop.charge: positional parameters reordered (old positional messages bind silently swapped);
- shop.notify: a required parameter added (old messages fail with TypeError);
- shop.email: subject became keyword-only (old positional calls fail);
- shop.legacy_sync: removed (old messages are discarded as unregistered);
- shop.report: unchanged.
"""

from __future__ import annotations

from tests.apps.shop_common import make_app, record

app = make_app("shop_v2")
app.conf.beat_schedule = {
    "nightly-report": {"task": "shop.report", "schedule": 86400, "args": (7,)},
    "hourly-notify": {"task": "shop.notify", "schedule": 3600, "args": (1,)},
}


@app.task(name="shop.charge", shared=False)
def charge(amount, order_id):
    record("shop.charge", order_id=order_id, amount=amount)


@app.task(name="shop.notify", shared=False)
def notify(user_id, channel):
    record("shop.notify", user_id=user_id, channel=channel)


@app.task(name="shop.report", shared=False)
def report(account, period="month"):
    record("shop.report", account=account, period=period)
    return account


@app.task(name="shop.email", shared=False)
def email(to, *, subject="hi"):
    record("shop.email", to=to, subject=subject)
