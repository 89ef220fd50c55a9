"""Renderers: escaping and limits that the CLI tests do not reach."""

from __future__ import annotations

import json
from pathlib import Path

from deploykit.manifest.check import Report
from deploykit.manifest.rules import Finding, Level
from deploykit.output import check as out


def _report(*items: Finding, fail_on: str = "error") -> Report:
    return Report(command="diff", old="a.json", new="b.json", findings=items, fail_on=fail_on, tasks_old=1)


TRICKY = Finding(
    rule="PARAM_REMOVED",
    level=Level.ERROR,
    task="billing:charge,v2",
    message="100% broken\nreally | truly",
    hint="keep it",
    file="src/billing.py",
    line=7,
    parameter="amount",
)


def test_github_annotation_escaping_and_prefix() -> None:
    text = out.github(_report(TRICKY), prefix="services/shop")
    first = text.splitlines()[0]
    assert first.startswith(
        "::error file=services/shop/src/billing.py,line=7,title=PARAM_REMOVED (billing%3Acharge%2Cv2)::"
    )
    assert "100%25 broken%0Areally | truly Hint: keep it" in first
    assert text.splitlines()[-1].startswith("deploykit diff: 1 error,")


def test_suppressed_findings_are_not_annotated_but_listed() -> None:
    report = _report(TRICKY.suppress("inline"))
    assert not report.failed
    assert not out.github(report).startswith("::")
    assert json.loads(out.gitlab(report)) == []
    table = out.markdown(report)
    assert "error (suppressed: inline)" in table
    assert "really \\| truly" in table
    assert "(suppressed: inline)" in out.text(report)


def test_fail_on_levels() -> None:
    warning = Finding("ROUTE_CHANGED", Level.WARNING, "t", "m", "h")
    assert not _report(warning).failed
    assert _report(warning, fail_on="warning").failed
    assert not _report(warning, fail_on="never").failed
    assert _report(Finding("TASK_ADDED", Level.INFO, "t", "m", "h"), fail_on="info").failed


def test_step_summary_is_capped(tmp_path: Path) -> None:
    many = tuple(
        Finding("PARAM_REMOVED", Level.ERROR, f"task.{i}", "x" * 500, "y" * 500, file="t.py", line=i + 1)
        for i in range(3000)
    )
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    out.write_step_summary(_report(*many), summary)
    text = summary.read_text()
    assert text.startswith("earlier step\n")
    assert len(text.encode()) < 1024 * 1024
    assert text.rstrip().endswith("for every finding._")


def test_gitlab_fingerprints_ignore_wording() -> None:
    reworded = Finding(**{**TRICKY.__dict__, "message": "other words"})
    assert out.fingerprint(reworded) == out.fingerprint(TRICKY)
    assert out.fingerprint(Finding(**{**TRICKY.__dict__, "parameter": "currency"})) != out.fingerprint(TRICKY)


def test_an_incomplete_check_is_never_ok_and_failing_findings_still_win() -> None:
    """check --broker with waiting messages not read: INCOMPLETE in every format, with the data."""
    import dataclasses

    unread = {"waiting": 36, "unchecked": 15, "unchecked_unknown": False, "locations": []}
    summary = "15 of 36 waiting message(s) not checked (15 in queue:celery: …; pass --peek …)"
    report = dataclasses.replace(_report(), command="check", incomplete=summary, unchecked=unread)
    assert report.verdict == "incomplete" and not report.failed
    assert out.summary_line(report).endswith(f"INCOMPLETE: {summary}")
    doc = report.document()
    assert doc["verdict"] == "incomplete"
    assert doc["incomplete"] == {"summary": summary, **unread}
    assert "::warning title=deploykit check%3A incomplete::15 of 36" in out.github(report)

    failing = dataclasses.replace(report, findings=(TRICKY,))
    assert failing.verdict == "failed"
    assert "FAILED (--fail-on error); also INCOMPLETE: 15 of 36" in out.summary_line(failing)
    finding = failing.document()["findings"][0]
    assert finding["data"] is None
    assert json.loads(out.to_json(failing))["incomplete"]["unchecked"] == 15


def test_every_format_links_the_rule_page(monkeypatch) -> None:
    """One URL builder (deploykit.docs.rule_url, configurable base) behind every format."""
    monkeypatch.setenv("DEPLOYKIT_DOCS_URL", "https://mirror.example.org/dk/")
    page = "https://mirror.example.org/dk/param-removed/"
    report = _report(TRICKY)
    assert report.document()["findings"][0]["docs"] == page
    assert f"docs: {page}" in out.text(report)
    assert out.github(report).splitlines()[0].endswith(f"Hint: keep it See {page}")
    (issue,) = json.loads(out.gitlab(report))
    # GitLab's Code Quality subset has no link field: the page ends the description.
    assert set(issue) == {"description", "check_name", "fingerprint", "severity", "location"}
    assert issue["description"].endswith(f"See {page}") and issue["check_name"] == "PARAM_REMOVED"
    assert f"| [`PARAM_REMOVED`]({page}) |" in out.markdown(report)


def test_github_annotations_follow_the_one_truncation_rule() -> None:
    """At most 10 per kind (GitHub shows no more per step), errors first, then one line saying how
    many were left out; the incomplete warning is never the one dropped."""
    import dataclasses

    errors = tuple(dataclasses.replace(TRICKY, task=f"t{i}") for i in range(12))
    warnings = tuple(Finding("ROUTE_CHANGED", Level.WARNING, f"w{i}", "m", "h") for i in range(10))
    report = dataclasses.replace(
        _report(*errors, *warnings), command="check", incomplete="3 of 4 waiting message(s) not checked"
    )
    lines = out.github(report).splitlines()
    kinds = [line.split(" ", 1)[0] for line in lines if line.startswith("::")]
    assert kinds == ["::error"] * 10 + ["::warning"] * 10
    assert lines[10].startswith("::warning title=deploykit check%3A incomplete::3 of 4")
    assert lines[-2] == (
        "deploykit check: 3 more finding(s) not annotated (GitHub shows 10 per kind per step); "
        "every finding is in the step summary and in --json"
    )
    assert lines[-1].startswith("deploykit check: 12 errors, 10 warnings")
    # The step summary lists every one of them.
    assert out.markdown(report).count("\n| ") == 1 + 22


def test_rules_listing_in_columns_with_each_page_under_its_rule():
    from deploykit.manifest.rules import Rule

    rules = [Rule("A_LONG_RULE", Level.ERROR, "Breaks."), Rule("B", Level.INFO, "Noted.")]
    lines: list[str] = []
    out.render_rules(rules, {"A_LONG_RULE": "https://d/a/", "B": "https://d/b/"}, lines.append)
    assert lines == [
        "A_LONG_RULE  error    Breaks.",
        "                      https://d/a/",
        "B            info     Noted.",
        "                      https://d/b/",
    ]
