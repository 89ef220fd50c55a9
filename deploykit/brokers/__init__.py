"""Broker access. :func:`open_broker` picks the implementation from the URL scheme.

The core only sees :class:`deploykit.brokers.base.Broker`; library imports (redis, amqp, httpx,
kombu transports) stay inside this package and happen only when a broker is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deploykit.brokers.urls import mask_url, parse_broker_url
from deploykit.errors import UsageError

if TYPE_CHECKING:  # kept out of the import: deploykit.config imports deploykit.brokers.urls
    from deploykit.brokers.base import Broker
    from deploykit.config import Settings


def open_broker(settings: Settings) -> Broker:
    """Open the broker named by ``settings`` (no network traffic until it is used)."""
    if not settings.broker_url:
        raise UsageError(
            "no broker configured: pass -b/--broker URL, set DEPLOYKIT_BROKER, add broker = … to "
            "[tool.deploykit] in pyproject.toml, or name an app with -A"
        )
    url = settings.broker_url
    parsed = parse_broker_url(url)
    scheme = parsed.scheme
    options = dict(settings.transport_options)
    from deploykit.brokers.clients import require_client_libraries

    require_client_libraries(url, scheme, mask_url(url) or "", options)
    if parsed.kind == "redis":
        from deploykit.brokers.redis import RedisBroker

        return RedisBroker(url, transport_options=options, timeout=settings.timeout)
    if parsed.kind == "rabbitmq":
        from deploykit.brokers.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(
            url,
            management_url=settings.management_url,
            transport_options=options,
            timeout=settings.timeout,
            consumer_timeout=settings.project.get("consumer_timeout"),
        )
    if parsed.kind == "filesystem":
        from deploykit.brokers.filesystem import FilesystemBroker

        return FilesystemBroker(url, transport_options=options)
    from kombu.transport import TRANSPORT_ALIASES

    if scheme in TRANSPORT_ALIASES:
        from deploykit.brokers.generic import KombuBroker

        return KombuBroker(url, transport_options=options, timeout=settings.timeout)
    raise UsageError(
        f"unknown broker URL scheme {scheme!r} in {mask_url(url)!r}: use one kombu supports "
        "(redis://, amqp://, filesystem://, sqs://, …)"
    )
