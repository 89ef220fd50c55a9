"""Reading task headers out of stored messages, without decoding (let alone unpickling) bodies.

Protocol v2 keeps the task name, id, ETA, expiry and argument reprs in plain headers
(celery-internals §2.1), so most questions about a waiting message need no body at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

_fast_loads: Callable[[Any], Any]
try:  # orjson parses broker envelopes ~3x faster; the scan's throughput target depends on it.
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency, but keep working without it
    _fast_loads = json.loads


def loads_json(data: bytes | str) -> Any:
    """Parse JSON fast; fall back to the stdlib for what orjson refuses (integers over 64 bits).

    Raises ``ValueError`` (``UnicodeDecodeError`` included) for invalid input, like ``json.loads``.
    """
    try:
        return _fast_loads(data)
    except ValueError:
        return json.loads(data)


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 time from a header (naive times are UTC, as Celery writes them), else None."""
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


@dataclass(frozen=True)
class TaskHeaders:
    """What a protocol-v2 header block says about a task message."""

    id: str | None
    name: str | None
    eta: datetime | None
    expires: datetime | None
    argsrepr: str | None
    kwargsrepr: str | None
    retries: int | None


def task_headers(headers: Mapping[str, Any]) -> TaskHeaders:
    """Read the task fields of a v2 header block (missing fields are ``None``)."""
    retries = headers.get("retries")
    return TaskHeaders(
        id=_str_or_none(headers.get("id")),
        name=_str_or_none(headers.get("task")),
        eta=parse_time(headers.get("eta")),
        expires=parse_time(headers.get("expires")),
        argsrepr=_str_or_none(headers.get("argsrepr")),
        kwargsrepr=_str_or_none(headers.get("kwargsrepr")),
        retries=retries if isinstance(retries, int) else None,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "undefined" else None


def shorten(text: str | None, width: int = 60) -> str | None:
    """``text`` cut to ``width`` characters with an ellipsis."""
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"
