"""Compare two manifests: a pure generator of :class:`~deploykit.manifest.rules.Finding`.

``diff(old, new)`` never imports user code and never looks at the clock: the same two manifests
always give the same findings, in the same order (by task name, then rule evaluation order).
Parameter logic follows griffe's ``_function_incompatibilities`` adapted to Celery messages, which
carry ``args`` by position and ``kwargs`` by name (griffe: ``griffe/_internal/diff.py``,
https://github.com/mkdocstrings/griffe).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

from deploykit.manifest.builtins import builtin_tasks
from deploykit.manifest.model import (
    KEYWORD_ONLY,
    OPTION_NAMES,
    POSITIONAL_ONLY,
    POSITIONAL_OR_KEYWORD,
    BeatEntry,
    Manifest,
    Parameter,
    Task,
)
from deploykit.manifest.rules import Finding, finding

_KIND_TEXT = {
    POSITIONAL_ONLY: "positional-only",
    POSITIONAL_OR_KEYWORD: "positional-or-keyword",
    KEYWORD_ONLY: "keyword-only",
}


def _absorbed(param: Parameter, task: Task) -> bool:
    """Would ``task`` silently accept an argument meant for ``param`` (via *args/**kwargs)?"""
    if param.kind == POSITIONAL_ONLY:
        return task.var_positional
    if param.kind == KEYWORD_ONLY:
        return task.var_keyword
    return task.var_positional and task.var_keyword


def _pair_renames(
    old: Task, new: Task, removed: list[Parameter], added: list[Parameter]
) -> list[tuple[Parameter, Parameter]]:
    """A removed and an added parameter in the same slot are one renamed parameter."""
    pairs: list[tuple[Parameter, Parameter]] = []
    old_pos = [p.name for p in old.positional]
    new_pos = [p.name for p in new.positional]
    for gone in removed:
        if gone.positional:
            index = old_pos.index(gone.name)
            match = next(
                (
                    p
                    for p in added
                    if p.positional
                    and index < len(new_pos)
                    and new_pos[index] == p.name
                    and p.kind == gone.kind
                ),
                None,
            )
        else:
            kw_removed = [p for p in removed if p.kind == KEYWORD_ONLY]
            kw_added = [p for p in added if p.kind == KEYWORD_ONLY]
            match = kw_added[0] if len(kw_removed) == 1 and len(kw_added) == 1 else None
        if match is not None and all(match is not q for _, q in pairs):
            pairs.append((gone, match))
    return pairs


def _split(old: Task, new: Task) -> tuple[list[Parameter], list[Parameter], list[Parameter], list[Parameter]]:
    """Named (non-variadic) parameters: old, new, removed and added."""
    old_named = [p for p in old.parameters if not p.variadic]
    new_named = [p for p in new.parameters if not p.variadic]
    old_names = {p.name for p in old_named}
    new_names = {p.name for p in new_named}
    removed = [p for p in old_named if p.name not in new_names]
    added = [p for p in new_named if p.name not in old_names]
    return old_named, new_named, removed, added


def parameter_renames(old: Task, new: Task) -> dict[str, str]:
    """Old name -> new name of the parameters renamed in place (what ``PARAM_RENAMED`` reports).

    The scan uses it: a positional value that lands on the renamed parameter binds exactly as
    before, so it is not misbound.
    """
    _, _, removed, added = _split(old, new)
    return {gone.name: came.name for gone, came in _pair_renames(old, new, removed, added)}


def _signature(task: Task) -> inspect.Signature:
    """A stand-in signature with ``task``'s parameters (defaults are placeholders)."""
    params = []
    for param in task.parameters:
        kind = getattr(inspect.Parameter, param.kind)
        default = None if param.has_default else inspect.Parameter.empty
        params.append(inspect.Parameter(param.name, kind, default=default))
    return inspect.Signature(params)


def _positional_outcomes(old: Task, new: Task, passing: int) -> tuple[bool, bool]:
    """What happens on ``new`` to queued all-positional messages of ``old`` that carry at least
    ``passing`` values: ``(some fail with TypeError, some bind)``.

    Old messages carry from as many values as ``old`` requires up to as many as it accepts (one
    more stands for any number absorbed by ``*args``). The caller knows whether binding is right.
    """
    low = max(passing, sum(1 for p in old.positional if p.required))
    high = len(old.positional) + (1 if old.var_positional else 0)
    signature = _signature(new)
    fails = binds = False
    for count in range(low, high + 1):
        try:
            signature.bind(*range(count))
        except TypeError:
            fails = True
        else:
            binds = True
    return fails, binds


def _positional_text(fails: bool, binds: bool, wrong: str) -> str:
    """How queued positional messages fare, as a clause (``wrong`` says what binding does)."""
    if fails and binds:
        return f"positional messages fail with TypeError or, depending on how many values they carry, {wrong}"
    if binds:
        return f"positional messages {wrong}, silently"
    return "positional messages fail with TypeError too"


def _kind_change(name: str, before: str, after: str) -> str | None:
    """The sentence for an incompatible kind transition, ``None`` for a compatible one."""
    if after == POSITIONAL_OR_KEYWORD:
        return None  # widening: positional and keyword callers both still bind
    broken = {
        (POSITIONAL_OR_KEYWORD, KEYWORD_ONLY): "messages passing it by position",
        (POSITIONAL_OR_KEYWORD, POSITIONAL_ONLY): "messages passing it by keyword",
        (POSITIONAL_ONLY, KEYWORD_ONLY): "messages passing it (always by position)",
        (KEYWORD_ONLY, POSITIONAL_ONLY): "messages passing it (always by keyword)",
    }[(before, after)]
    return (
        f"Parameter '{name}' changed from {_KIND_TEXT[before]} to {_KIND_TEXT[after]}: "
        f"{broken} fail with TypeError on new workers."
    )


def _added_required_text(old: Task, new: Task, came: Parameter) -> str:
    """What a new required parameter does to queued messages, per calling shape."""
    every = "every queued message for this task lacks it and fails with TypeError on new workers"
    if not came.positional:
        return every
    index = [p.name for p in new.positional].index(came.name)
    # Messages carrying fewer values than its position lack it; any that bind, bind it wrongly.
    fails, binds = _positional_outcomes(old, new, 0)
    if not binds:
        return every + " (whether it passes its arguments by position or by keyword)"
    displaced = old.positional[index].name if index < len(old.positional) else "*args"
    wrong = f"bind the value meant for '{displaced}' to '{came.name}'"
    return (
        "queued messages passing their arguments by keyword lack it and fail with TypeError on new "
        f"workers; {_positional_text(fails, binds, wrong)}"
    )


def _removed_text(old: Task, new: Task, gone: Parameter) -> str:
    """What a removed parameter does to the queued messages that pass it, per calling shape."""
    keyword = "queued messages passing it by keyword fail with TypeError on new workers"
    if new.var_keyword:
        keyword = "queued messages passing it by keyword run (**kwargs takes it)"
    if not gone.positional:
        return keyword
    index = [p.name for p in old.positional].index(gone.name)
    fails, binds = _positional_outcomes(old, new, index + 1)
    if index < len(new.positional):
        wrong = f"bind its value to '{new.positional[index].name}' and shift the ones after it"
    else:
        wrong = "pass its value into *args"
    positional = _positional_text(fails, binds, wrong).replace(
        "positional messages", "messages passing it by position", 1
    )
    if gone.kind == POSITIONAL_ONLY:
        return positional + " on new workers"
    return f"{keyword}; {positional}"


def diff_parameters(old: Task, new: Task) -> Iterator[Finding]:
    """Findings for the signature change of one task kept under the same name."""
    task, file, line = new.name, new.file, new.line
    old_named, _, removed, added = _split(old, new)
    renames = _pair_renames(old, new, removed, added)
    renamed_old = {a.name: b for a, b in renames}
    renamed_new = {b.name for _, b in renames}

    for gone, came in renames:
        if gone.kind == POSITIONAL_ONLY and came.kind == POSITIONAL_ONLY:
            continue  # nobody can pass a positional-only parameter by name: a free rename
        # Paired parameters have the same kind: positional-or-keyword or keyword-only here.
        queued = f"queued messages passing {gone.name}= by keyword fail with TypeError on new workers"
        if gone.positional:
            queued += f", while those passing it by position bind to '{came.name}' as before"
        yield finding(
            "PARAM_RENAMED",
            task,
            f"Parameter '{gone.name}' was renamed to '{came.name}': {queued}; old workers reject new "
            f"messages passing {came.name}=.",
            f"Keep '{gone.name}' as an optional alias next to '{came.name}' for one release "
            "(both with defaults), then drop it once no queued message uses the old name.",
            parameter=came.name,
            file=file,
            line=line,
        )
        if gone.has_default and not came.has_default:
            yield finding(
                "PARAM_BECAME_REQUIRED",
                task,
                f"Parameter '{came.name}' (was '{gone.name}') has no default any more: queued messages "
                "that omit it fail with TypeError on new workers.",
                f"Keep a default for '{came.name}'.",
                parameter=came.name,
                file=file,
                line=line,
            )

    for gone in removed:
        if gone.name in renamed_old or _absorbed(gone, new):
            continue
        yield finding(
            "PARAM_REMOVED",
            task,
            f"Parameter '{gone.name}' was removed: {_removed_text(old, new, gone)}"
            + ("; old workers fail on new messages that omit it." if gone.required else "."),
            f"Keep accepting '{gone.name}' (with a default, unused) for one release and remove it once "
            "no queued message carries it; or absorb it with *args/**kwargs.",
            parameter=gone.name,
            file=file,
            line=line,
        )

    old_pos = [renamed_old[p.name].name if p.name in renamed_old else p.name for p in old.positional]
    new_pos = [p.name for p in new.positional]
    for old_index, name in enumerate(old_pos):
        if name in new_pos and new_pos.index(name) != old_index:
            new_index = new_pos.index(name)
            yield finding(
                "PARAM_MOVED",
                task,
                f"Positional parameter '{name}' moved from position {old_index + 1} to {new_index + 1}: "
                "queued messages with positional args bind their values to the wrong parameters on new "
                "workers (and new messages on old workers), silently.",
                "Keep the positional order: add new parameters at the end with defaults, or make them "
                "keyword-only (after *).",
                parameter=name,
                file=file,
                line=line,
            )

    for before in old_named:
        after = new.parameter(before.name)
        if after is None:
            continue
        if before.kind != after.kind:
            sentence = _kind_change(before.name, before.kind, after.kind)
            if sentence is not None:
                yield finding(
                    "PARAM_KIND_CHANGED",
                    task,
                    sentence,
                    f"Keep '{before.name}' {_KIND_TEXT[before.kind]}; put new keyword-only parameters "
                    "after it instead.",
                    parameter=before.name,
                    file=file,
                    line=line,
                )
        if before.has_default and not after.has_default:
            yield finding(
                "PARAM_BECAME_REQUIRED",
                task,
                f"Parameter '{before.name}' lost its default ({before.default}): queued messages that omit "
                "it fail with TypeError on new workers.",
                f"Keep the default for '{before.name}' until no queued message omits it.",
                parameter=before.name,
                file=file,
                line=line,
            )
        elif not before.has_default and after.has_default:
            yield finding(
                "PARAM_BECAME_OPTIONAL",
                task,
                f"Parameter '{before.name}' gained a default ({after.default}): compatible for queued "
                "messages, which all pass it; while the fleet is mixed, old workers fail with TypeError "
                "on messages from new producers that omit it.",
                "Nothing to do for queued messages; start omitting it only once every worker runs the "
                "new code.",
                parameter=before.name,
                file=file,
                line=line,
            )
        elif before.has_default and after.has_default and before.default != after.default:
            yield finding(
                "PARAM_DEFAULT_CHANGED",
                task,
                f"Default of '{before.name}' changed from {before.default} to {after.default}: queued "
                "messages that omit it run with the new value on new workers and the old value on old ones.",
                "Pass the value explicitly at the call sites that depend on it, or keep the default.",
                parameter=before.name,
                file=file,
                line=line,
            )
        if None not in (before.annotation, after.annotation) and before.annotation != after.annotation:
            yield finding(
                "ANNOTATION_CHANGED",
                task,
                f"Annotation of '{before.name}' changed from {before.annotation} to {after.annotation}: "
                "messages carry no types, so queued values keep their old type.",
                "Make the task accept values of the old type too until the queue is drained.",
                parameter=before.name,
                file=file,
                line=line,
            )

    for came in added:
        if came.name in renamed_new:
            continue
        if came.required:
            yield finding(
                "PARAM_ADDED_REQUIRED",
                task,
                f"Required parameter '{came.name}' was added: {_added_required_text(old, new, came)}; old "
                "workers reject new messages that pass it.",
                f"Give '{came.name}' a default value (e.g. {came.name}=None) so old messages still bind.",
                parameter=came.name,
                file=file,
                line=line,
            )
        elif not _absorbed(came, old):
            yield finding(
                "PARAM_ADDED_OPTIONAL",
                task,
                f"Optional parameter '{came.name}' was added: safe for queued messages, but while the "
                "fleet is mixed, old workers fail with TypeError on messages from new producers that "
                "pass it.",
                "Expand then contract: ship the workers that accept it first (or deploy every worker "
                "before any producer), and start passing it in a later release.",
                parameter=came.name,
                file=file,
                line=line,
            )

    if old.var_positional and not new.var_positional:
        yield finding(
            "VARARGS_REMOVED",
            task,
            "*args was removed: queued messages passing extra positional arguments fail with TypeError "
            "on new workers.",
            "Keep *args for one release and remove it once no queued message relies on it.",
            file=file,
            line=line,
        )
    if old.var_keyword and not new.var_keyword:
        yield finding(
            "VARKW_REMOVED",
            task,
            "**kwargs was removed: queued messages passing extra keyword arguments fail with TypeError "
            "on new workers.",
            "Keep **kwargs for one release and remove it once no queued message relies on it.",
            file=file,
            line=line,
        )


def diff_options(old: Task, new: Task) -> Iterator[Finding]:
    """Routing, serializer and other deploy-relevant option changes."""
    file, line = new.file, new.line
    if old.queue is not None and new.queue is not None and old.queue != new.queue:
        yield finding(
            "ROUTE_CHANGED",
            new.name,
            f"The task now routes to queue '{new.queue}' instead of '{old.queue}': messages already in "
            f"'{old.queue}' are stranded unless some worker still consumes it, and old workers never see "
            f"new messages in '{new.queue}'.",
            f"Keep a worker consuming '{old.queue}' until it is empty (deploykit queues shows its depth), "
            f"and start consumers of '{new.queue}' before the producers.",
            file=file,
            line=line,
        )
    old_ser, new_ser = old.options.get("serializer"), new.options.get("serializer")
    if old_ser != new_ser and "serializer" in old.options and "serializer" in new.options:
        yield finding(
            "SERIALIZER_CHANGED",
            new.name,
            f"The serializer changed from {old_ser} to {new_ser}: while the fleet is mixed, workers whose "
            "accept_content lacks the new content type reject new messages.",
            f"First add {new_ser} to accept_content on every worker, then switch the task's serializer.",
            file=file,
            line=line,
        )
    for option in OPTION_NAMES:
        if option == "serializer" or option not in old.options or option not in new.options:
            continue
        if old.options[option] != new.options[option]:
            yield finding(
                "OPTION_CHANGED",
                new.name,
                f"Option {option} changed from {old.options[option]!r} to {new.options[option]!r}: "
                "queued messages run under the new setting on new workers.",
                "Check that in-flight work tolerates the new behaviour.",
                parameter=option,
                file=file,
                line=line,
            )


def _rename_score(gone: Task, candidate: Task) -> int:
    if (
        gone.module
        and gone.qualname
        and (gone.module, gone.qualname) == (candidate.module, candidate.qualname)
    ):
        return 3
    if gone.file and gone.line and (gone.file, gone.line) == (candidate.file, candidate.line):
        return 2
    if gone.qualname and gone.qualname == candidate.qualname and gone.parameters == candidate.parameters:
        return 1
    return 0


def match_renames(old: Manifest, new: Manifest) -> dict[str, str]:
    """Old name -> new name for tasks that are the same function under a new name."""
    removed = [n for n in old.tasks if n not in new.tasks]
    added = [n for n in new.tasks if n not in old.tasks]
    taken: set[str] = set()
    renames: dict[str, str] = {}
    for name in sorted(removed):
        scored = sorted(
            ((_rename_score(old.tasks[name], new.tasks[c]), c) for c in added if c not in taken),
            reverse=True,
        )
        if not scored or scored[0][0] == 0:
            continue
        best_score = scored[0][0]
        best = [c for s, c in scored if s == best_score]
        if len(best) == 1:
            renames[name] = best[0]
            taken.add(best[0])
    return renames


def _binding_error(entry: BeatEntry, task: Task) -> str | None:
    """Python's own TypeError text when the entry's args/kwargs do not bind to ``task``."""
    try:
        signature = _signature(task)
        signature.bind(*entry.args, **dict(entry.kwargs))
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def diff_beat(old: Manifest, new: Manifest) -> Iterator[Finding]:
    """Beat entries (new schedule, and the old schedule still running during the rollout)."""
    old_entries = {e.key() for e in old.beat}
    new_entries = {e.key() for e in new.beat}
    checked: list[tuple[BeatEntry, str]] = [(e, "") for e in new.beat]
    checked += [
        (e, " (old schedule, still sent until beat restarts)") for e in old.beat if e.key() not in new_entries
    ]
    seen: set[tuple[str, str, str | None]] = set()
    builtins = builtin_tasks()  # registered by every worker: never missing
    for entry, note in sorted(checked, key=lambda item: (item[0].task, item[0].name, item[1])):
        target = new.tasks.get(entry.task) or builtins.get(entry.task)
        before = old.tasks.get(entry.task) or builtins.get(entry.task)
        unchanged = entry.key() in old_entries
        if target is None:
            if before is None and unchanged:
                continue  # a pre-existing dangling reference, not a change
            key = (entry.task, "missing", entry.name)
            if key in seen:
                continue
            seen.add(key)
            yield finding(
                "BEAT_TASK_MISSING",
                entry.task,
                f"Beat entry '{entry.name}'{note} sends '{entry.task}', which the new code does not "
                "register: every run is discarded as an unregistered task.",
                "Update or remove the beat entry in the same release (and restart beat with the new code).",
                beat_entry=entry.name,
                file=before.file if before is not None else None,
                line=before.line if before is not None else None,
            )
            continue
        error = _binding_error(entry, target)
        if error is None:
            continue
        if unchanged and before is not None and _binding_error(entry, before) is not None:
            continue  # it already failed before this change
        yield finding(
            "BEAT_ARGS_UNBOUND",
            entry.task,
            f"Beat entry '{entry.name}'{note} calls {entry.task}{_call_text(entry)}, which does not bind "
            f"to {target.signature_text()}: {error}; every run fails with TypeError.",
            "Change the beat entry's args/kwargs in the same release, or keep the signature compatible.",
            beat_entry=entry.name,
            file=target.file,
            line=target.line,
        )


def _call_text(entry: BeatEntry) -> str:
    parts: Sequence[str] = [*entry.args, *(f"{k}={v}" for k, v in entry.kwargs.items())]
    return "(" + ", ".join(parts) + ")"


def diff(old: Manifest, new: Manifest) -> Iterator[Finding]:
    """Every finding for going from ``old`` to ``new``, grouped by task name."""
    renames = match_renames(old, new)
    renamed_to = set(renames.values())
    per_task: dict[str, list[Finding]] = {}

    def add(items: Iterator[Finding]) -> None:
        for item in items:
            per_task.setdefault(item.task or "", []).append(item)

    for name in sorted(set(old.tasks) | set(new.tasks)):
        before, after = old.tasks.get(name), new.tasks.get(name)
        if before is not None and after is not None:
            add(diff_parameters(before, after))
            add(diff_options(before, after))
        elif before is not None and name in renames:
            target = new.tasks[renames[name]]
            add(_renamed(name, target))
        elif before is not None:
            add(_removed(before))
        elif after is not None and name not in renamed_to:
            add(_added(after))
    add(diff_beat(old, new))
    for name in sorted(per_task):
        yield from per_task[name]


def _renamed(name: str, target: Task) -> Iterator[Finding]:
    yield finding(
        "TASK_RENAMED",
        target.name,
        f"Task '{name}' is now registered as '{target.name}': queued messages for '{name}' are "
        f"discarded as unregistered by new workers, and old workers discard '{target.name}' messages "
        "from new producers.",
        f"Pin the old name with @app.task(name='{name}'), or keep an alias task named '{name}' that "
        "calls the new one until its queue is drained.",
        file=target.file,
        line=target.line,
    )


def _removed(before: Task) -> Iterator[Finding]:
    yield finding(
        "TASK_REMOVED",
        before.name,
        f"Task '{before.name}' is gone: its queued messages (ETA tasks, retries and beat runs included) "
        "are discarded as unregistered by new workers.",
        "Keep the task registered (it may just log and return) until no message for it is queued, and "
        "remove it in a later release.",
        file=before.file,
        line=before.line,
    )


def _added(after: Task) -> Iterator[Finding]:
    yield finding(
        "TASK_ADDED",
        after.name,
        f"New task '{after.name}': old workers discard its messages as unregistered if new producers "
        "send it before every worker is upgraded.",
        "Upgrade the workers before the producers that call it.",
        file=after.file,
        line=after.line,
    )
