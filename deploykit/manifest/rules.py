"""The rule catalogue of ``check``/``diff``/``check --broker``, and a factory for their findings.

Every rule has a stable UPPER_SNAKE ID (used in ``--json``, suppressions and CI annotations), a
default level and a one-line summary; :class:`~deploykit.findings.Finding` and
:class:`~deploykit.findings.Level` are the vocabulary every command shares. Rules reason about
both directions of a rolling deploy: *old messages reaching new workers* (queued, ETA, retries,
beat) and *new producers reaching old workers* while the fleet is mixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deploykit.findings import Finding, Level

__all__ = ["RULES", "Finding", "Level", "Rule", "finding"]


@dataclass(frozen=True)
class Rule:
    id: str
    level: Level
    summary: str


_CATALOGUE = (
    Rule("TASK_REMOVED", Level.ERROR, "A task name disappeared: its queued messages are discarded."),
    Rule("TASK_RENAMED", Level.ERROR, "The same function is registered under a new name."),
    Rule("TASK_ADDED", Level.INFO, "A new task: old workers discard it until they are upgraded."),
    Rule(
        "PARAM_ADDED_REQUIRED",
        Level.ERROR,
        "A parameter without a default was added: queued messages fail, or bind wrongly by position.",
    ),
    Rule("PARAM_ADDED_OPTIONAL", Level.WARNING, "A parameter with a default was added."),
    Rule("PARAM_REMOVED", Level.ERROR, "A parameter was removed and nothing absorbs it."),
    Rule(
        "PARAM_RENAMED",
        Level.ERROR,
        "A parameter was renamed: queued messages passing it by keyword fail (by position: unchanged).",
    ),
    Rule("PARAM_MOVED", Level.ERROR, "A positional parameter changed position."),
    Rule("PARAM_BECAME_REQUIRED", Level.ERROR, "A parameter lost its default."),
    Rule("PARAM_KIND_CHANGED", Level.ERROR, "A parameter changed kind incompatibly."),
    Rule("PARAM_DEFAULT_CHANGED", Level.WARNING, "A parameter's default value changed."),
    Rule("PARAM_BECAME_OPTIONAL", Level.INFO, "A parameter gained a default: compatible for old messages."),
    Rule("VARARGS_REMOVED", Level.ERROR, "*args was removed."),
    Rule("VARKW_REMOVED", Level.ERROR, "**kwargs was removed."),
    Rule("ANNOTATION_CHANGED", Level.INFO, "A parameter's type annotation changed."),
    Rule("ROUTE_CHANGED", Level.WARNING, "The task routes to a different queue."),
    Rule("SERIALIZER_CHANGED", Level.WARNING, "The task's serializer changed."),
    Rule("OPTION_CHANGED", Level.INFO, "A deploy-relevant task option changed."),
    Rule("BEAT_TASK_MISSING", Level.ERROR, "A beat entry names a task that is not registered."),
    Rule("BEAT_ARGS_UNBOUND", Level.ERROR, "A beat entry's args/kwargs do not bind to the signature."),
    # From `deploykit check --broker`: messages already waiting, judged against the new code.
    Rule("WAITING_FAILS", Level.ERROR, "Messages already waiting would fail with TypeError on the new code."),
    Rule(
        "WAITING_DISCARDED", Level.ERROR, "Messages already waiting name a task the new code no longer has."
    ),
    Rule("WAITING_MISBOUND", Level.ERROR, "Messages already waiting would bind to other parameters."),
    Rule("WAITING_UNDECIDABLE", Level.WARNING, "Messages already waiting could not be decoded and checked."),
)

#: Rule ID -> rule, in catalogue order.
RULES: dict[str, Rule] = {rule.id: rule for rule in _CATALOGUE}


def finding(
    rule_id: str,
    task: str,
    message: str,
    hint: str,
    *,
    file: str | None = None,
    line: int | None = None,
    parameter: str | None = None,
    beat_entry: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> Finding:
    """A finding at its rule's default level."""
    return Finding(
        rule=rule_id,
        level=RULES[rule_id].level,
        task=task,
        message=message,
        hint=hint,
        file=file,
        line=line,
        parameter=parameter,
        beat_entry=beat_entry,
        data=data,
    )
