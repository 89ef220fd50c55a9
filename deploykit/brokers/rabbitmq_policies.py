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

import httpx

from deploykit.brokers.rabbitmq_api import ManagementAPI, ManagementDown, NoSuchVhost
from deploykit.brokers.urls import management_endpoint
from deploykit.brokers.urls import vhost_of as vhost_of

#: The columns of ``GET /api/queues/{vhost}`` the policies need.
POLICY_COLUMNS = "name,policy,operator_policy,effective_policy_definition"


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
    vhost = vhost_of(broker_url)
    api = ManagementAPI(management_endpoint(management_url, broker_url), timeout=timeout, transport=transport)
    try:
        rows = api.list_queues(vhost, POLICY_COLUMNS)
    except NoSuchVhost:
        return None, f"RabbitMQ policies not read: the management API knows no virtual host {vhost!r}"
    except ManagementDown as down:
        return None, f"RabbitMQ policies not read: management API {down.problem}"
    finally:
        api.close()
    result: dict[str, QueuePolicy] = {}
    for row in rows:
        if not isinstance(row.get("name"), str):
            continue
        definition = row.get("effective_policy_definition")
        names = [str(p) for p in (row.get("policy"), row.get("operator_policy")) if p]
        result[row["name"]] = QueuePolicy(
            row["name"],
            " + ".join(names) or None,
            dict(definition) if isinstance(definition, Mapping) else {},
        )
    return result, None
