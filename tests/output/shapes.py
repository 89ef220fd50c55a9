"""The shape of a JSON document (keys and value types), and validation against ``schemas/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS_DIR = ROOT / "schemas"


def shape(value: Any) -> Any:
    """Keys kept, values replaced by their JSON type; a list by the distinct shapes of its items."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        shapes: list[Any] = []
        for item in value:
            if shape(item) not in shapes:
                shapes.append(shape(item))
        return shapes
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def schema_file(name: str) -> Path:
    """``deploykit.workers/1`` -> ``schemas/workers.1.json``."""
    kind, _, version = name.removeprefix("deploykit.").partition("/")
    return SCHEMAS_DIR / f"{kind}.{version}.json"


def validate(document: dict[str, Any]) -> None:
    """Validate ``document`` against the schema file its ``schema`` field names (it must exist)."""
    import jsonschema

    path = schema_file(document["schema"])
    assert path.exists(), f"{document['schema']} has no schema file ({path.relative_to(ROOT)})"
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(document)
