"""JSON text: one document with a ``schema`` field, stable key order, ISO-8601 times.

Published documents are built field by field in :mod:`deploykit.output.documents`; this module
only writes them. A dataclass (or any object without an obvious JSON form) is refused with a
:class:`TypeError` rather than serialised from its fields: an internal rename must never change a
published schema silently.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any


def _default(obj: Any) -> Any:
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    raise TypeError(
        f"{type(obj).__name__} is not JSON: build the document field by field (deploykit.output.documents)"
    )


def dumps(document: Any, *, indent: int | None = 2) -> str:
    """Serialise ``document`` (plain values; datetimes, enums, paths and bytes as text)."""
    return json.dumps(document, default=_default, indent=indent, ensure_ascii=False)
