"""The worker fleet, reached through Celery's remote control (``inspect``/``control``)."""

from __future__ import annotations

from typing import Any

from deploykit.config import Settings
from deploykit.fleet.base import Fleet


def open_fleet(settings: Settings, app: Any = None) -> Fleet:
    """A :class:`Fleet` on the configured broker, through the user's app when there is one."""
    from deploykit.fleet.control import CeleryFleet
    from deploykit.userapp import bare_app

    if app is None:
        assert settings.broker_url is not None  # open_broker() has already refused a missing URL
        app = bare_app(settings.broker_url, dict(settings.transport_options))
    else:
        # Settings resolved from flags/env/pyproject override the app's own broker.
        if settings.broker_url and settings.broker_url != app.conf.broker_url:
            app.conf.broker_url = settings.broker_url
        app.conf.broker_transport_options = dict(settings.transport_options)
    return CeleryFleet(app, timeout=settings.timeout, display_url=settings.masked_broker_url or "")


def control_exchange(app: Any) -> str:
    """The remote-control exchange name the workers listen on (``celery`` unless configured)."""
    if app is None:
        return "celery"
    return str(app.conf.control_exchange or "celery")
