"""RabbitMQ queue policies, for ``doctor``: which policy applies to each queue, and its definition.

A policy (or an operator policy) can set ``consumer-timeout``, ``delivery-limit`` or the queue type
without any trace in the application's code. The management API reports the result per queue as
``policy`` and ``effective_policy_definition`` (``GET /api/queues/{vhost}``,
https://www.rabbitmq.com/docs/http-api-reference).
Failures become ``None`` plus a note: the audit still runs without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from deploykit.brokers.urls import management_endpoint
from deploykit.brokers.urls import vhost_of as vhost_of


@dataclass(frozen=True)
class QueuePolicy:
    """The policy in force on one queue."""

    queue: str
    policy: str | None
    definition: Mapping[str, Any] = field(default_factory=dict)


def read_queue_policies(
    management_url: str,
    broker_url: str,
    *,
    timeout: float = 5.0,
    transport: httpx.BaseTransport | None = None,
) -> tuple[dict[str, QueuePolicy] | None, str | None]:
    """Effective policies of every queue in the broker URL's vhost, or ``(None, why not)``."""
    endpoint = management_endpoint(management_url, broker_url)
    url = f"{endpoint.base_url}/api/queues/{quote(vhost_of(broker_url), safe='')}"
    params = {"columns": "name,policy,operator_policy,effective_policy_definition"}
    try:
        with httpx.Client(auth=endpoint.auth, timeout=timeout, transport=transport) as client:
            response = client.get(url, params=params)
            response.raise_for_status()
            rows = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return None, f"RabbitMQ policies not read from the management API ({type(exc).__name__})"
    if isinstance(rows, Mapping):  # pagination=true shape
        rows = rows.get("items", [])
    result: dict[str, QueuePolicy] = {}
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, Mapping) or not isinstance(row.get("name"), str):
            continue
        definition = row.get("effective_policy_definition")
        names = [str(p) for p in (row.get("policy"), row.get("operator_policy")) if p]
        result[row["name"]] = QueuePolicy(
            row["name"],
            " + ".join(names) or None,
            dict(definition) if isinstance(definition, Mapping) else {},
        )
    return result, None
