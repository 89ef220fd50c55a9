"""Every published ``--json`` document: its shape pinned by a golden file, valid against its JSON
Schema in ``schemas/``, and no schema name without a schema file.

The documents are built by :mod:`deploykit.output.documents` (and the renderers it wraps) from
results the real core produced on fakes (``producers.py``). A golden file holds the document's
shape: keys and JSON types, values left out (times, ids and durations vary). After a deliberate
change, regenerate them with ``DEPLOYKIT_UPDATE_GOLDEN=1 pytest tests/output`` and review the diff:
a renamed or removed field is a new schema version (see the README's "JSON output").
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from deploykit.output import documents as d
from deploykit.output.jsonout import dumps
from tests.output import producers as p
from tests.output.shapes import ROOT, SCHEMAS_DIR, schema_file, shape, validate

GOLDEN = Path(__file__).parent / "golden"
B = p.BROKER


def _scheduled() -> dict[str, Any]:
    view, fleet_view = p.scheduled()
    return d.scheduled_document(view, fleet_view, broker=B)


def _doctor() -> dict[str, Any]:
    from deploykit.output.doctor import doctor_document

    audit, found = p.doctor()
    return d.health_document("doctor", doctor_document(audit, found, fail_on="error", failed=True), broker=B)


def _probe() -> dict[str, Any]:
    from deploykit.output.doctor import probe_document

    return d.health_document("probe", probe_document(p.probe()), broker=B)


def _scan() -> dict[str, Any]:
    from deploykit.output.scan import document

    return document(p.scan(), new="app proj", old="old.json", broker=B)


def _snapshot_check(tmp: Path) -> dict[str, Any]:
    from deploykit.manifest import model
    from deploykit.manifest.check import staleness

    old, new = p.manifests()
    path = tmp / "deploykit.manifest.json"
    path.write_text(model.dumps(old))
    state = staleness(path, new)
    return d.snapshot_check_document(
        state, path=str(path), tasks=len(new.tasks), beat=len(new.beat), load_warnings=["x: y"]
    )


def _rules() -> dict[str, Any]:
    from deploykit.cli import app

    result = CliRunner().invoke(app, ["manifest", "rules", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _registry(tmp: Path, kind: str) -> dict[str, Any]:
    """A registry that went over its limit and has a corrupt entry: the real core, a directory store."""
    from deploykit.brokers.manifest_store import DirectoryManifestStore
    from deploykit.registry import ManifestRegistry

    old, new = p.manifests()
    registry = ManifestRegistry(DirectoryManifestStore(tmp / "registry"), limit=2)
    registry.publish("v1", old)
    registry.publish("v2", old, protect={"v1"})
    result = registry.publish("v3", new, protect={"v1"})
    (tmp / "registry" / "broken.json").write_text("{")
    if kind == "publish":
        return d.publish_document(result, registry=registry.location, limit=2)
    return d.registry_document(registry.entries(), registry=registry.location)


def _builds() -> dict[str, Any]:
    from tests.unit.test_builds_core import golden_view

    return d.builds_document(golden_view(), broker=B)


#: golden name -> the document, built from a core result.
PRODUCERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "workers": lambda _: d.workers_document(p.workers(), broker=B),
    "queues": lambda _: d.queues_document(p.queues(), broker=B),
    "scheduled": lambda _: _scheduled(),
    "status": lambda _: d.status_document(p.status(), broker=B),
    "drain": lambda _: d.drain_document(p.drain(), broker=B, record="redis hash deploykit:consumers:celery"),
    "resume": lambda _: d.resume_document(p.resume_result(), broker=B),
    "shutdown": lambda _: d.shutdown_document(p.shutdown(), broker=B),
    "restart": lambda _: d.restart_document(p.restart(), broker=B),
    "deploy": lambda _: d.deploy_document(p.deploy(), broker=B),
    "doctor": lambda _: _doctor(),
    "probe": lambda _: _probe(),
    "scan": lambda _: _scan(),
    "findings": lambda _: p.findings().document(),
    "snapshot-check": _snapshot_check,
    "snapshot-written": lambda _: d.snapshot_written_document("m.json", written=True, tasks=3, beat=1),
    "rules": lambda _: _rules(),
    "publish": lambda tmp: _registry(tmp, "publish"),
    "registry": lambda tmp: _registry(tmp, "registry"),
    "builds": lambda _: _builds(),
}


@pytest.mark.parametrize("name", sorted(PRODUCERS))
def test_document_shape_matches_its_golden_file_and_its_schema(name: str, tmp_path: Path) -> None:
    document = json.loads(dumps(PRODUCERS[name](tmp_path)))
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("DEPLOYKIT_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(shape(document), indent=2) + "\n")
    assert shape(document) == json.loads(golden.read_text()), f"{name}: the published shape changed"
    validate(document)


def test_every_published_document_is_produced_here(tmp_path: Path) -> None:
    produced = set()
    for name in PRODUCERS:
        (tmp_path / name).mkdir()
        produced.add(PRODUCERS[name](tmp_path / name)["schema"])
    assert produced | {d.schema_name("snapshot")} == {d.schema_name(kind) for kind in d.SCHEMAS}


def test_every_schema_name_has_a_schema_file_and_every_file_a_name() -> None:
    names = {d.schema_name(kind) for kind in d.SCHEMAS}
    missing = [n for n in sorted(names) if not schema_file(n).exists()]
    assert not missing, f"schema names without a file in schemas/: {missing}"
    files = {f.name for f in SCHEMAS_DIR.glob("*.json")}
    assert files == {schema_file(n).name for n in names}, "a schema file no document uses"
    for name in names:
        assert json.loads(schema_file(name).read_text())["properties"]["schema"]["const"] == name


def test_no_schema_name_is_spelt_outside_the_registry() -> None:
    """A document that writes its own ``deploykit.<name>/<n>`` could publish a name with no
    schema file: every such literal in the package must be a registered one."""
    pattern = re.compile(r"deploykit\.([a-z_]+)/(\d+)")
    registered = {(kind, str(version)) for kind, version in d.SCHEMAS.items()}
    strays = []
    for path in sorted((ROOT / "deploykit").rglob("*.py")):
        for match in pattern.finditer(path.read_text()):
            if (match.group(1), match.group(2)) not in registered:
                strays.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not strays
    cli = "\n".join(f.read_text() for f in (ROOT / "deploykit" / "cli").glob("*.py"))
    assert '"schema":' not in cli and "SCHEMA_VERSION" not in cli, (
        "documents are built in output/documents.py"
    )


def test_a_validator_rejects_an_unknown_schema_name() -> None:
    with pytest.raises(AssertionError, match="no schema file"):
        validate({"schema": "deploykit.nothing/1"})


def test_json_text_refuses_dataclasses_and_unknown_objects() -> None:
    @dataclasses.dataclass
    class Internal:
        renamed_field: int

    with pytest.raises(TypeError, match="field by field"):
        dumps({"x": Internal(1)})
    with pytest.raises(TypeError):
        dumps({"x": object()})
    assert json.loads(dumps({"t": (1, 2), "p": Path("a")})) == {"t": [1, 2], "p": "a"}


def test_renaming_an_internal_field_fails_the_builder_not_silently_the_schema() -> None:
    """The builders read attributes by name: a renamed dataclass field is an AttributeError in
    the tests, never a silently renamed JSON key."""
    result = p.drain()
    renamed = dataclasses.make_dataclass(
        "Renamed", [("outcome" if f.name == "status" else f.name, Any) for f in dataclasses.fields(result)]
    )(**{("outcome" if k == "status" else k): v for k, v in vars(result).items()})
    with pytest.raises(AttributeError):
        d.drain_document(renamed, broker=B, record="r")
