"""Would a call bind to a task's signature? And to the same parameters as before?

A :class:`CallChecker` is built once per task signature (the per-signature cache): it compiles a
stub function with exactly the task's parameters, so calling it with a message's arguments raises
the very ``TypeError`` Python — and so the Celery worker — would raise, at the cost of one
function call. The stub's body is ``pass``; the generated source contains only validated
identifiers, never values from the broker.
"""

from __future__ import annotations

import keyword
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

POSITIONAL_ONLY = "POSITIONAL_ONLY"
POSITIONAL_OR_KEYWORD = "POSITIONAL_OR_KEYWORD"
VAR_POSITIONAL = "VAR_POSITIONAL"
KEYWORD_ONLY = "KEYWORD_ONLY"
VAR_KEYWORD = "VAR_KEYWORD"
KINDS = (POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD, VAR_POSITIONAL, KEYWORD_ONLY, VAR_KEYWORD)


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    has_default: bool = False


@dataclass(frozen=True)
class TaskSpec:
    """What the scan needs to know about a registered task."""

    name: str
    #: The function's own name (what Python puts in its TypeError messages).
    function: str
    params: tuple[Param, ...]
    #: ``bind=True``: Celery passes the task instance as ``self`` first.
    bound: bool = False
    #: The function's qualified name: Python >= 3.11 uses it in TypeError messages.
    qualname: str | None = None


def _valid(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _stub_source(function: str, params: Sequence[Param], bound: bool) -> str:
    parts: list[str] = ["self"] if bound else []
    seen_kw_marker = False
    wrote_slash = False
    has_posonly = any(p.kind == POSITIONAL_ONLY for p in params)
    for param in params:
        if has_posonly and not wrote_slash and param.kind != POSITIONAL_ONLY:
            parts.append("/")
            wrote_slash = True
        if param.kind == VAR_POSITIONAL:
            parts.append("*" + param.name)
            seen_kw_marker = True
        elif param.kind == VAR_KEYWORD:
            parts.append("**" + param.name)
        elif param.kind == KEYWORD_ONLY:
            if not seen_kw_marker:
                parts.append("*")
                seen_kw_marker = True
            parts.append(param.name + ("=None" if param.has_default else ""))
        else:
            parts.append(param.name + ("=None" if param.has_default else ""))
    if has_posonly and not wrote_slash:
        parts.append("/")
    return f"def {function}({', '.join(parts)}):\n    pass\n"


class CallChecker:
    """Checks calls against one task signature."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        names = [p.name for p in spec.params]
        function = spec.function if _valid(spec.function) else "task"
        if (
            not all(_valid(n) for n in names)
            or len(set(names)) != len(names)
            or any(p.kind not in KINDS for p in spec.params)
        ):
            raise ValueError(f"task {spec.name}: unusable parameter list {names}")
        namespace: dict[str, Any] = {}
        exec(
            compile(_stub_source(function, spec.params, spec.bound), f"<signature of {spec.name}>", "exec"),
            namespace,
        )
        stub = namespace[function]
        if spec.qualname:
            stub.__qualname__ = spec.qualname
        self._stub = stub
        self._self = (object(),) if spec.bound else ()
        self._positional = [p.name for p in spec.params if p.kind in (POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD)]
        self._star = next((p.name for p in spec.params if p.kind == VAR_POSITIONAL), None)
        self._slots_cache: dict[int, tuple[str, ...]] = {}

    def error(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        """The ``TypeError`` message the worker would raise, or ``None`` if the call binds."""
        try:
            self._stub(*self._self, *args, **kwargs)
        except TypeError as exc:
            return str(exc)
        return None

    def positional_slots(self, count: int) -> tuple[str, ...]:
        """The parameter each of ``count`` positional arguments lands on (``*args`` → ``*name``)."""
        slots = self._slots_cache.get(count)
        if slots is None:
            named = self._positional[:count]
            rest = count - len(named)
            star = f"*{self._star}" if self._star else "<extra>"
            slots = tuple(named) + (star,) * rest
            self._slots_cache[count] = slots
        return slots
