"""The scan's verdicts as findings (``WAITING_*`` rules), for ``scan`` and ``check --broker``."""

from __future__ import annotations

from typing import Any

from deploykit.manifest.model import Manifest
from deploykit.manifest.rules import Finding, finding
from deploykit.scan.engine import Group, Report, Verdict

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


def verdict_rule(verdict: Verdict) -> str | None:
    """The ``WAITING_*`` rule ID of a verdict (``None`` for ``runs``): its page explains it."""
    rule = _RULES.get(verdict)
    return rule[0] if rule else None


def verdict_docs(verdict: Verdict) -> str | None:
    """The documentation page of a verdict's rule (see :func:`deploykit.docs.rule_url`)."""
    from deploykit.docs import rule_url

    rule = verdict_rule(verdict)
    return rule_url(rule) if rule else None


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _what(group: Group) -> str:
    """``3 waiting message(s)``, ``1 beat entry``, or both."""
    parts = []
    if group.count:
        parts.append(f"{group.count} waiting message(s)")
    if group.beat:
        parts.append(_plural(group.beat, "beat entry", "beat entries"))
    return " and ".join(parts)


def group_data(group: Group) -> dict[str, Any]:
    """A group's numbers as plain JSON values (the ``data`` of a ``WAITING_*`` finding)."""
    return {
        "verdict": group.verdict.value,
        "count": group.count,
        "beat_entries": group.beat,
        "locations": dict(group.locations.most_common()),
        "reasons": dict(group.reasons.most_common()),
        "sample_ids": list(group.samples),
        "earliest_eta": group.earliest_eta.isoformat() if group.earliest_eta else None,
        "latest_eta": group.latest_eta.isoformat() if group.latest_eta else None,
        "expired": group.expired,
    }


def scan_findings(report: Report, new: Manifest | None = None) -> list[Finding]:
    """One finding per (task, verdict) group that is not ``runs``, each reason with its count.

    With the new code's manifest, each finding points at its task's ``def`` line.
    """
    findings = []
    for group in report.sorted_groups():
        if group.verdict is Verdict.RUNS:
            continue
        rule_id, what, hint = _RULES[group.verdict]
        where = ", ".join(f"{name} ({count})" for name, count in group.locations.most_common(3))
        if len(group.locations) > 3:
            where += f", +{len(group.locations) - 3} more"
        message = f"{_what(group)} would {what} (in {where})"
        reasons = group.reasons.most_common()
        # A group keeps its first five distinct reasons; the rest are counted together.
        other = group.count + group.beat - sum(count for _, count in reasons)
        if len(reasons) == 1 and other <= 0:
            message += f": {reasons[0][0]}"
        elif reasons:
            message += ": " + "; ".join(f"{count} x {reason}" for reason, count in reasons)
            if other > 0:
                message += f"; {other} x other reasons"
        task = new.tasks.get(group.task) if new is not None else None
        findings.append(
            finding(
                rule_id,
                group.task,
                message,
                hint,
                file=task.file if task else None,
                line=task.line if task else None,
                data=group_data(group),
            )
        )
    return findings


def unchecked_data(report: Report) -> dict[str, Any]:
    """What the scan did not read, as plain JSON values (``check --broker``'s ``incomplete``)."""
    return {
        "waiting": report.waiting,
        "unchecked": report.unchecked_count,
        "unchecked_unknown": report.unchecked_unknown,
        "locations": [
            {"location": u.location, "count": u.count, "reason": u.reason, "remedy": u.remedy}
            for u in report.unchecked
        ],
    }
