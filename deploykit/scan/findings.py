"""The scan's verdicts as manifest-style findings, for ``deploykit check --broker``."""

from __future__ import annotations

from deploykit.manifest.model import Manifest
from deploykit.manifest.rules import Finding, finding
from deploykit.scan.engine import Report, Verdict

_RULES = {
    Verdict.FAILS: (
        "WAITING_FAILS",
        "fail",
        "Drain these messages before the release (`deploykit drain "
        "--until-empty`), or ship a compatible signature first (a default, **kwargs) and "
        "change producers in a later release.",
    ),
    Verdict.DISCARDED: (
        "WAITING_DISCARDED",
        "be discarded as unregistered",
        "Keep the old task name registered (an alias task) until these messages are drained.",
    ),
    Verdict.MISBOUND: (
        "WAITING_MISBOUND",
        "run with arguments bound to the wrong parameters",
        "Keep the old parameter order, or drain these messages before the release.",
    ),
    Verdict.UNDECIDABLE: (
        "WAITING_UNDECIDABLE",
        "be undecidable (not decodable here)",
        "Inspect them by hand; pickle payloads are never decoded by deploykit.",
    ),
}


def scan_findings(report: Report, new: Manifest) -> list[Finding]:
    """One finding per (task, verdict) group that is not ``runs``."""
    findings = []
    for group in report.sorted_groups():
        if group.verdict is Verdict.RUNS:
            continue
        rule_id, what, hint = _RULES[group.verdict]
        where = ", ".join(f"{name} ({count})" for name, count in group.locations.most_common(3))
        reason = next(iter(group.reasons), None)
        message = f"{group.count} waiting message(s) would {what} (in {where})"
        if reason:
            message += f": {reason}"
        task = new.tasks.get(group.task)
        findings.append(
            finding(
                rule_id,
                group.task,
                message,
                hint,
                file=task.file if task else None,
                line=task.line if task else None,
            )
        )
    return findings
