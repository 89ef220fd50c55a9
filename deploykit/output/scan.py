"""Renderers for the scan report: text, JSON document, GitHub annotations + step summary."""

from __future__ import annotations

import os
from typing import Any

from deploykit.scan.engine import BREAKING, Group, Report, Verdict
from deploykit.scan.findings import unchecked_data, verdict_docs, verdict_rule

#: Version 2: ``totals`` and ``groups[].count`` count messages only (beat entries moved to
#: ``beat{}`` and ``groups[].beat_entries``); ``totals.breaking`` no longer includes beat entries.
#: A reader of version 1 would misread those numbers, hence the bump (adding fields would not need one).
SCHEMA = "deploykit.scan/2"
GITHUB_ANNOTATIONS_PER_KIND = 10


def _counts(totals: Any) -> dict[str, int]:
    return {v.value: totals.get(v, 0) for v in Verdict}


def document(report: Report, *, new: str, old: str | None, broker: str | None) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "broker": broker,
        "new_code": new,
        "old_manifest": old,
        "generated_at": report.now,
        # unsafe (exit 1) wins over incomplete (exit 5), which wins over ok (exit 0).
        "verdict": report.verdict,
        # Messages only: beat entries are counted in "beat".
        "totals": {
            **_counts(report.totals),
            "scanned": report.scanned,
            "breaking": report.breaking_messages,
            "expired": report.expired,
            "waiting": report.waiting,
            "unchecked": report.unchecked_count,
            "unchecked_unknown": report.unchecked_unknown,
        },
        "beat": {
            **_counts(report.beat_totals),
            "entries": report.beat_entries,
            "breaking": report.breaking_beat,
        },
        "unchecked": unchecked_data(report)["locations"],
        "groups": [
            {
                "task": g.task,
                "verdict": g.verdict.value,
                "count": g.count,
                "beat_entries": g.beat,
                "locations": dict(g.locations.most_common()),
                "reasons": dict(g.reasons.most_common()),
                "earliest_eta": g.earliest_eta,
                "latest_eta": g.latest_eta,
                "expired": g.expired,
                "sample_ids": g.samples,
                # The WAITING_* rule of the verdict and its page (null for runs).
                "rule": verdict_rule(g.verdict),
                "docs": verdict_docs(g.verdict),
            }
            for g in report.sorted_groups()
        ],
        "by_location": dict(report.by_location),
        "largest": {
            task: [{"size": size, "id": task_id} for size, task_id in sorted(heap, reverse=True)]
            for task, heap in sorted(report.largest.items())
        },
        "oversize_threshold": report.oversize,
        "oversized": dict(report.oversized),
        "undecidable_reasons": dict(report.undecidable_reasons.most_common()),
        "notes": report.notes,
    }


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def verdict_line(report: Report) -> str:
    """The verdict line: UNSAFE / INCOMPLETE / OK, messages and beat entries counted apart."""
    totals = ", ".join(f"{report.totals.get(v, 0)} {v.value}" for v in Verdict)
    line = f"{report.verdict.upper()}  {report.scanned} message(s) checked: {totals}"
    if report.beat_entries:
        beat = ", ".join(f"{n} {v.value}" for v in Verdict if (n := report.beat_totals.get(v, 0)))
        line += f"; {_plural(report.beat_entries, 'beat entry', 'beat entries')}: {beat}"
    incomplete = report.incomplete_summary()
    if incomplete:
        line += f"; incomplete: {incomplete}"
    return line


def _where(locations: Any) -> str:
    parts = [f"{name} x{count}" for name, count in locations.most_common(3)]
    if len(locations) > 3:
        parts.append(f"+{len(locations) - 3} more")
    return ", ".join(parts)


def _size(group: Group) -> str:
    parts = []
    if group.count or not group.beat:
        parts.append(f"{group.count} message(s)")
    if group.beat:
        parts.append(_plural(group.beat, "beat entry", "beat entries"))
    return " + ".join(parts)


def _reasons(group: Group) -> str:
    """Every reason of a group, each with its count when there are several."""
    reasons = group.reasons.most_common()
    if not reasons:
        return ""
    if len(reasons) == 1:
        return reasons[0][0]
    return "; ".join(f"{count} x {reason}" for reason, count in reasons)


def render_text(report: Report, out: Any) -> None:
    """One block per task and verdict, the worst first, what was not checked, then the verdict."""
    if not report.groups:
        out.print("No waiting message checked." if report.incomplete else "No waiting message found.")
    for g in report.sorted_groups():
        eta = ""
        if g.earliest_eta:
            eta = f"  ETA {g.earliest_eta:%Y-%m-%d %H:%M}"
            if g.latest_eta and g.latest_eta != g.earliest_eta:
                eta += f" … {g.latest_eta:%Y-%m-%d %H:%M}"
        samples = f"  e.g. {', '.join(g.samples)}" if g.samples else ""
        out.print(
            f"{g.verdict.value.upper():<11} {g.task}  {_size(g)} in {_where(g.locations)}{eta}",
            highlight=False,
        )
        if samples:
            out.print(f"            {samples.strip()}", highlight=False)
        for reason, count in g.reasons.most_common(3):
            if g.verdict is not Verdict.RUNS:
                prefix = f"{count} x " if len(g.reasons) > 1 else ""
                out.print(f"            {prefix}{reason}", highlight=False)
        if g.expired:
            out.print(f"            {g.expired} of them expired (expires in the past): they will be dropped")
        docs = verdict_docs(g.verdict)
        if docs:
            out.print(f"            docs: {docs}", highlight=False, soft_wrap=True)
    for task, count in sorted(report.oversized.items()):
        largest = max(report.largest.get(task, [(0, "?")]))
        out.print(
            f"Oversized: {count} message(s) of {task} exceed {report.oversize} bytes "
            f"(largest {largest[0]} bytes, id {largest[1]}): pass references, not data"
        )
    for u in report.unchecked:
        if u.count != 0:
            how_many = "an unknown number of" if u.count is None else str(u.count)
            out.print(
                f"Not checked: {how_many} message(s) in {u.location}: {u.reason}; {u.remedy}",
                highlight=False,
                soft_wrap=True,
            )
    for note in report.notes:
        out.print(f"Note: {note}", highlight=False, soft_wrap=True)
    out.print(verdict_line(report), highlight=False, soft_wrap=True)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(report: Report, write: Any) -> None:
    """Workflow-command annotations (at most 10 per kind are shown) and the full table in
    ``$GITHUB_STEP_SUMMARY``."""
    shown = {"error": 0, "warning": 0}
    for g in report.sorted_groups():
        kind = "error" if g.verdict in BREAKING else "warning" if g.verdict is Verdict.UNDECIDABLE else None
        if kind is None or shown[kind] >= GITHUB_ANNOTATIONS_PER_KIND:
            continue
        shown[kind] += 1
        title = _escape_property(f"deploykit scan: {_size(g)} of {g.task} {g.verdict.value}")
        message = _reasons(g) or g.verdict.value
        docs = verdict_docs(g.verdict)
        if docs:
            message += f" See {docs}"
        write(f"::{kind} title={title}::{_escape_data(message)}\n")
    incomplete = report.incomplete_summary()
    if incomplete:
        title = _escape_property("deploykit scan: incomplete")
        write(f"::warning title={title}::{_escape_data(incomplete)}\n")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        lines = [
            "## deploykit scan",
            "",
            f"{report.scanned} waiting message(s) checked, {report.breaking_messages} would fail, be "
            f"discarded or misbind; {report.beat_entries} beat entries checked, {report.breaking_beat} "
            "would break.",
            "",
            *([f"**Incomplete**: {incomplete}", ""] if incomplete else []),
            "| task | verdict | messages | beat entries | where | why |",
            "|---|---|---|---|---|---|",
        ]
        for g in report.sorted_groups():
            why = _reasons(g).replace("|", "\\|")
            docs = verdict_docs(g.verdict)
            verdict = f"[{g.verdict.value}]({docs})" if docs else g.verdict.value
            lines.append(f"| `{g.task}` | {verdict} | {g.count} | {g.beat} | {_where(g.locations)} | {why} |")
        text = "\n".join(lines) + "\n"
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(text[: 1024 * 1000])
    write(f"deploykit scan: {verdict_line(report)}\n")
