"""Doctor renderers: JSON body shape, GitHub annotations (escaped, capped) and step summary."""

from __future__ import annotations

import json
from pathlib import Path

from deploykit.doctor.model import Audit, ConfigSource, Finding, Level, finding
from deploykit.output.doctor import doctor_document, render_doctor_github
from deploykit.output.findings import GITHUB_ANNOTATIONS_PER_KIND
from deploykit.output.jsonout import dumps


def _finding(i: int = 0, level: Level = Level.ERROR, **kw: object) -> Finding:
    base: dict[str, object] = {
        "rule": "ACKS_LATE_WITHOUT_REJECT",
        "level": level,
        "title": f"title {i}: 50% lost, a,b",
        "why": "why",
        "fix": "fix\nnow",
        "where": ("app",),
    }
    return finding(**{**base, **kw})  # type: ignore[arg-type]


AUDIT = Audit(broker_kind="redis", app=ConfigSource("app", {}))


def _github(findings: list[Finding], tmp_path: Path) -> tuple[list[str], str]:
    lines: list[str] = []
    summary = tmp_path / "summary.md"
    render_doctor_github(AUDIT, findings, lines.append, {"GITHUB_STEP_SUMMARY": str(summary)})
    return lines, summary.read_text()


def test_json_document_shape() -> None:
    doc = json.loads(dumps(doctor_document(AUDIT, [_finding()], fail_on="error", failed=True)))
    assert doc["summary"] == {"error": 1, "warning": 0, "info": 0}
    assert doc["failed"] is True and doc["fail_on"] == "error"
    (found,) = doc["findings"]
    # The finding object every command shares (deploykit.doctor/2).
    assert found == {
        "rule": "ACKS_LATE_WITHOUT_REJECT",
        "level": "error",
        "task": None,
        "parameter": None,
        "beat_entry": None,
        "message": "title 0: 50% lost, a,b",
        "hint": "fix\nnow",
        "docs": "https://deploykit.readthedocs.io/en/stable/rules/acks-late-without-reject/",
        "file": None,
        "line": None,
        "suppressed": False,
        "suppressed_by": None,
        "data": None,
        "why": "why",
        "where": ["app"],
    }
    assert doc["audited"]["app"] is True and doc["audited"]["broker_kind"] == "redis"


def test_github_annotations_are_escaped_and_point_at_files(tmp_path: Path) -> None:
    lines, _ = _github([_finding(file="deploy/celery.conf", line=7, level=Level.WARNING)], tmp_path)
    first = lines[0]
    assert first.startswith(
        "::warning file=deploy/celery.conf,line=7,title=ACKS_LATE_WITHOUT_REJECT (app)::title 0: 50%25 lost"
    )
    assert "fix%0Anow" in first and "\n" not in first
    assert lines[-1].startswith("deploykit doctor: 0 error(s), 1 warning(s), 0 info — audited the app")


def test_github_annotations_are_capped_per_level_and_summary_lists_all(tmp_path: Path) -> None:
    findings = [_finding(i) for i in range(GITHUB_ANNOTATIONS_PER_KIND + 5)] + [_finding(99, Level.INFO)]
    lines, text = _github(findings, tmp_path)
    assert sum(line.startswith("::error ") for line in lines) == GITHUB_ANNOTATIONS_PER_KIND
    assert sum(line.startswith("::notice ") for line in lines) == 1
    # What was left out is said once, in the log, before the summary line.
    assert lines[-2] == (
        "deploykit doctor: 5 more finding(s) not annotated (GitHub shows 10 per kind per step); "
        "every finding is in the step summary and in --json"
    )
    assert text.count("[`ACKS_LATE_WITHOUT_REJECT`]") == len(findings)
    assert "title 14" in text and text.startswith("### deploykit doctor: risky settings\n")
