"""``check`` / ``diff`` output: a :class:`~deploykit.manifest.check.Report` in every format.

The findings themselves are rendered by :mod:`deploykit.output.findings` (one renderer per
format, shared with ``doctor`` and ``scan``); this module adds the report's heading, notes and
summary line. JSON: :meth:`Report.document` (schema ``deploykit.findings/1``). Also the
``manifest rules`` listing (:func:`render_rules`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.manifest.check import Report
from deploykit.output import findings as out
from deploykit.output.findings import FORMATS as FORMATS
from deploykit.output.findings import fingerprint as fingerprint

if TYPE_CHECKING:
    from deploykit.manifest.rules import Rule

_EMPTY = "No changes that affect queued or in-flight tasks."


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 or word == "info" else "s")


def summary_line(report: Report) -> str:
    counts = report.counts()
    parts = [
        _plural(counts["error"], "error"),
        _plural(counts["warning"], "warning"),
        _plural(counts["info"], "info"),
    ]
    if counts["suppressed"]:
        parts.append(f"{counts['suppressed']} suppressed")
    if report.failed:
        verdict = f"FAILED (--fail-on {report.fail_on})"
        if report.incomplete:
            verdict += f"; also INCOMPLETE: {report.incomplete}"
    elif report.incomplete:
        verdict = f"INCOMPLETE: {report.incomplete}"
    else:
        verdict = "OK"
    return f"{', '.join(parts)}; {report.tasks_old} -> {report.tasks_new} tasks. {verdict}"


def heading(report: Report) -> out.Heading:
    summary = summary_line(report)
    return out.Heading(
        command=report.command,
        summary=summary,
        title=f"deploykit {report.command}: task signatures",
        intro=f"`{out.cell(report.old)}` → `{out.cell(report.new)}`: **{summary}**",
        notes=report.notes,
        incomplete=report.incomplete,
        empty=_EMPTY,
    )


def render_text(report: Report, console: Any) -> None:
    """What was compared, the notes, the findings grouped by task, then the summary line."""
    from rich.text import Text

    console.print(Text(f"deploykit {report.command}: {report.old} -> {report.new}"), soft_wrap=True)
    for note in report.notes:
        console.print(Text(f"note: {note}", style="dim"), soft_wrap=True)
    out.render_text(report.findings, console, empty=_EMPTY)
    console.print()
    console.print(Text(summary_line(report), style="bold red" if report.failed else ""), soft_wrap=True)


def text(report: Report, *, width: int = 120) -> str:
    """The text rendering without colour, as a string (for ``--report text=PATH``)."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    render_text(report, Console(file=buffer, no_color=True, width=width, highlight=False, soft_wrap=True))
    return buffer.getvalue()


def to_json(report: Report) -> str:
    return json.dumps(report.document(), indent=2, ensure_ascii=False) + "\n"


def github(report: Report, *, prefix: str | None = None) -> str:
    """Annotations (see :func:`deploykit.output.findings.github` for the truncation rule)."""
    return out.github(report.findings, heading(report), prefix=prefix)


def gitlab(
    report: Report, *, prefix: str | None = None, fallback_path: str = "deploykit.manifest.json"
) -> str:
    return out.gitlab(report.findings, prefix=prefix, fallback_path=fallback_path)


def markdown(report: Report, *, prefix: str | None = None) -> str:
    return out.markdown(report.findings, heading(report), prefix=prefix)


def write_step_summary(report: Report, path: Path, *, prefix: str | None = None) -> None:
    """Append the Markdown section to ``$GITHUB_STEP_SUMMARY`` (capped, see the findings renderer)."""
    out.write_step_summary(markdown(report, prefix=prefix), path)


def render(report: Report, fmt: str, *, prefix: str | None = None, fallback_path: str | None = None) -> str:
    """Any format as a string (text without colour)."""
    if fmt == "text":
        return text(report)
    if fmt == "json":
        return to_json(report)
    if fmt == "github":
        return github(report, prefix=prefix)
    if fmt == "gitlab":
        return gitlab(report, prefix=prefix, fallback_path=fallback_path or "deploykit.manifest.json")
    if fmt == "markdown":
        return markdown(report, prefix=prefix)
    raise ValueError(fmt)


def render_rules(rules: Sequence[Rule], pages: Mapping[str, str], write: Callable[[str], None]) -> None:
    """``manifest rules``: each rule's ID, default level and summary, and its page on the next
    line, in columns. Its ``--json`` document is :func:`deploykit.output.documents.rules_document`."""
    width = max((len(rule.id) for rule in rules), default=0)
    for rule in rules:
        write(f"{rule.id:<{width}}  {rule.level.value:<7}  {rule.summary}")
        write(f"{'':<{width}}  {'':<7}  {pages[rule.id]}")
