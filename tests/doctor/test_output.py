"""Doctor renderers: JSON document shape, GitHub annotations (escaped, capped) and step summary."""

from __future__ import annotations

import json
from pathlib import Path

from deploykit.doctor.model import Audit, ConfigSource, Finding, Level
from deploykit.output.doctor import (
    GITHUB_ANNOTATION_CAP,
    doctor_document,
    github_annotations,
    render_doctor_github,
)
from deploykit.output.jsonout import dumps


def _finding(i: int = 0, level: Level = Level.ERROR, **kw: object) -> Finding:
    base: dict[str, object] = {
        "id": "acks-late-without-reject",
        "level": level,
        "title": f"title {i}: 50% lost, a,b",
        "why": "why",
        "fix": "fix\nnow",
        "where": ("app",),
    }
    return Finding(**{**base, **kw})  # type: ignore[arg-type]


AUDIT = Audit(broker_kind="redis", app=ConfigSource("app", {}))


def test_json_document_shape() -> None:
    doc = json.loads(dumps(doctor_document(AUDIT, [_finding()], fail_on="error", failed=True)))
    assert doc["summary"] == {"error": 1, "warning": 0, "info": 0}
    assert doc["failed"] is True and doc["fail_on"] == "error"
    (finding,) = doc["findings"]
    assert finding == {
        "id": "acks-late-without-reject",
        "level": "error",
        "title": "title 0: 50% lost, a,b",
        "why": "why",
        "fix": "fix\nnow",
        "docs": "https://deploykit.readthedocs.io/en/stable/rules/acks-late-without-reject/",
        "where": ["app"],
        "file": None,
        "line": None,
    }
    assert doc["audited"]["app"] is True and doc["audited"]["broker_kind"] == "redis"


def test_github_annotations_are_escaped_and_point_at_files() -> None:
    (line,) = github_annotations([_finding(file="deploy/celery.conf", line=7, level=Level.WARNING)])
    assert line.startswith("::warning file=deploy/celery.conf,line=7,title=deploykit doctor%3A acks-late")
    assert "50%25 lost" in line and "fix%0Anow" in line and "\n" not in line


def test_github_annotations_are_capped_per_level_and_summary_lists_all(tmp_path: Path) -> None:
    findings = [_finding(i) for i in range(GITHUB_ANNOTATION_CAP + 5)] + [_finding(99, Level.INFO)]
    lines: list[str] = []
    summary = tmp_path / "summary.md"
    render_doctor_github(AUDIT, findings, lines.append, {"GITHUB_STEP_SUMMARY": str(summary)})
    assert sum(line.startswith("::error ") for line in lines) == GITHUB_ANNOTATION_CAP
    assert sum(line.startswith("::notice ") for line in lines) == 1
    text = summary.read_text()
    assert text.count("[`acks-late-without-reject`]") == len(findings)
    assert "title 14" in text
