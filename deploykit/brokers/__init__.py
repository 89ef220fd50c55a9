"""Broker access. :func:`open_broker` picks the implementation from the URL scheme.

The core only sees :class:`deploykit.brokers.base.Broker`; library imports (redis, amqp, httpx,
kombu transports) stay inside this package and happen only when a broker is opened.
"""

from __future__ import annotations

from deploykit.brokers.base import Broker
from deploykit.config import Settings, mask_url
from deploykit.errors import UsageError

REDIS_SCHEMES = {"redis", "rediss", "redis+socket", "sentinel"}
AMQP_SCHEMES = {"amqp", "amqps", "pyamqp"}
FILESYSTEM_SCHEMES = {"filesystem"}


def broker_scheme(url: str) -> str:
    """The transport scheme of ``url`` (the first of a ``;`` failover list), lower-cased."""
    first = url.split(";")[0].strip()
    scheme, sep, _ = first.partition("://")
    if not sep or not scheme:
        raise UsageError(f"invalid broker URL {mask_url(first)!r}: expected SCHEME://…")
    return scheme.lower()


def open_broker(settings: Settings) -> Broker:
    """Open the broker named by ``settings`` (no network traffic until it is used)."""
    if not settings.broker_url:
        raise UsageError(
            "no broker configured: pass -b/--broker URL, set DEPLOYKIT_BROKER, add broker = … to "
            "[tool.deploykit] in pyproject.toml, or name an app with -A"
        )
    url = settings.broker_url
    scheme = broker_scheme(url)
    options = dict(settings.transport_options)
    if scheme in REDIS_SCHEMES:
        from deploykit.brokers.redis import RedisBroker

        return RedisBroker(url, transport_options=options, timeout=settings.timeout)
    if scheme in AMQP_SCHEMES:
        from deploykit.brokers.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(
            url,
            management_url=settings.management_url,
            transport_options=options,
            timeout=settings.timeout,
            consumer_timeout=settings.project.get("consumer_timeout"),
        )
    if scheme in FILESYSTEM_SCHEMES:
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
