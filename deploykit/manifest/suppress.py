"""Suppressions for deliberate changes; suppressed findings stay in the output, marked.

Two sources:

* inline, on the task's decorator/``def`` lines (or a class-based task's ``class`` line):
  ``# deploykit: ignore[PARAM_REMOVED, PARAM_MOVED]``; a bare ``# deploykit: ignore`` covers every
  rule. The snapshot records them (``ignore`` in the manifest), so ``diff`` of two files sees them;
  for a removed task the old code's comment counts.
* ``[tool.deploykit] ignore = [...]`` in ``pyproject.toml``, each entry ``"RULE_ID"`` (every task)
  or ``"TASK:RULE_ID"``, where ``TASK`` is a task name or an fnmatch pattern (``"billing.*:TASK_REMOVED"``)
  and ``RULE_ID`` may be ``*``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from deploykit.errors import UsageError
from deploykit.manifest.model import Manifest
from deploykit.manifest.rules import RULES, Finding


@dataclass(frozen=True)
class IgnoreEntry:
    """One ``[tool.deploykit] ignore`` entry."""

    task: str
    rule: str
    text: str

    def matches(self, finding: Finding) -> bool:
        return (self.rule in ("*", finding.rule)) and fnmatch.fnmatchcase(finding.task or "", self.task)


def parse_ignore(raw: Any, *, source: str = "[tool.deploykit] ignore") -> tuple[IgnoreEntry, ...]:
    """Validate the configured list; unknown rule IDs are usage errors (typos must not pass silently)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise UsageError(f'{source} must be a list of strings like "RULE_ID" or "task.name:RULE_ID"')
    entries = []
    for text in raw:
        task, _, rule = text.strip().rpartition(":")
        rule = rule.strip().upper()
        if rule != "*" and rule not in RULES:
            raise UsageError(f"{source}: unknown rule {rule!r} in {text!r} (known: {', '.join(RULES)})")
        entries.append(IgnoreEntry(task=task.strip() or "*", rule=rule, text=text))
    return tuple(entries)


def _inline_rules(finding: Finding, old: Manifest, new: Manifest) -> Sequence[str]:
    if finding.task is None:
        return ()
    task = new.tasks.get(finding.task)
    if task is None:
        task = old.tasks.get(finding.task)
    return task.ignore if task is not None else ()


def apply_suppressions(
    findings: Iterable[Finding],
    old: Manifest,
    new: Manifest,
    ignore: Sequence[IgnoreEntry] = (),
) -> list[Finding]:
    """Mark the findings that an inline comment or a configured entry suppresses."""
    result = []
    for item in findings:
        inline = _inline_rules(item, old, new)
        if "*" in inline or item.rule in inline:
            item = item.suppress("inline")
        else:
            entry = next((e for e in ignore if e.matches(item)), None)
            if entry is not None:
                item = item.suppress(f"pyproject: {entry.text}")
        result.append(item)
    return result
