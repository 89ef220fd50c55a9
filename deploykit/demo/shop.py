"""What both releases of the demo shop share: broker, queues, routes and settings."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue


def make_app() -> Celery:
    """The shop's Celery app; the broker comes from ``DEPLOYKIT_DEMO_BROKER``."""
    app = Celery("shop", broker=os.environ.get("DEPLOYKIT_DEMO_BROKER", "redis://127.0.0.1:6379/0"))
    app.conf.update(
        task_queues=[Queue("celery"), Queue("emails")],
        task_routes={
            "shop.send_welcome_email": {"queue": "emails"},
            "shop.send_invoice": {"queue": "emails"},
        },
        worker_prefetch_multiplier=2,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # A visibility timeout shorter than the longest countdown this shop uses: a classic way to
        # run a task twice. `deploykit scheduled`, `status` and `doctor` flag it.
        broker_transport_options={"visibility_timeout": 600},
        # Late acks without task_reject_on_worker_lost: `deploykit doctor` explains why that loses tasks.
        task_acks_late=True,
    )
    return app
