"""Task messages as brokers store them: the headers deploykit reads, and a fast JSON reader.

Protocol v2 keeps the task name, id, ETA, expiry and argument reprs in plain headers
(celery/app/amqp.py, AMQP.as_task_v2), so most questions about a waiting message need no body at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec

from deploykit.celery import validate_build

_decode_json = msgspec.json.Decoder().decode


def loads_json(data: bytes | str) -> Any:
    """Parse JSON fast; fall back to the stdlib for what msgspec refuses.

    kombu writes its JSON with the stdlib, which emits ``NaN`` and ``Infinity`` for such floats:
    valid messages for Celery, so they must stay readable here. Raises ``ValueError``
    (``UnicodeDecodeError`` included) for invalid input, like ``json.loads``.
    """
    try:
        return _decode_json(data)
    except (ValueError, msgspec.DecodeError):  # DecodeError is a ValueError from msgspec 0.21 on
        return json.loads(data)


class StoredHeaders(msgspec.Struct, gc=False):
    """The protocol-v2 headers deploykit reads, exactly as stored: values are unvalidated JSON.

    A struct rather than a dict: decoding an envelope into it skips every other header without
    building it (a scan decodes millions), and this is the one list of headers that matter.
    """

    id: Any = None
    task: Any = None
    eta: Any = None
    expires: Any = None
    retries: Any = None
    argsrepr: Any = None
    kwargsrepr: Any = None
    #: MIME type of the body's compression (``application/x-gzip``…), set by ``apply_async(compression=)``.
    compression: Any = None
    #: The build id of the code that published the message (``deploykit.celery.HEADER``).
    deploykit_build: Any = None

    @classmethod
    def from_mapping(cls, headers: Mapping[str, Any]) -> StoredHeaders:
        """The headers deploykit reads, from a header table (AMQP, a worker's reply…)."""
        return cls(*(headers.get(name) for name in cls.__struct_fields__))


#: A message without a header table (protocol v1, or not a task message at all).
NO_HEADERS = StoredHeaders()


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
    #: The build that published the message (stamped by :mod:`deploykit.celery`); ``None``: unstamped.
    build: str | None = None


def task_headers(headers: StoredHeaders) -> TaskHeaders:
    """Read the task fields of a v2 header block (missing or malformed fields are ``None``)."""
    retries = headers.retries
    return TaskHeaders(
        id=_str_or_none(headers.id),
        name=_str_or_none(headers.task),
        eta=parse_time(headers.eta),
        expires=parse_time(headers.expires),
        argsrepr=_str_or_none(headers.argsrepr),
        kwargsrepr=_str_or_none(headers.kwargsrepr),
        retries=retries if isinstance(retries, int) and not isinstance(retries, bool) else None,
        build=_build_or_none(headers.deploykit_build),
    )


def _build_or_none(value: Any) -> str | None:
    """A stamped build id, if it is a valid one (a message is untrusted input; it gets printed)."""
    if not isinstance(value, str):
        return None
    try:
        return validate_build(value)
    except ValueError:
        return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "undefined" else None


def shorten(text: str | None, width: int = 60) -> str | None:
    """``text`` cut to ``width`` characters with an ellipsis."""
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"
