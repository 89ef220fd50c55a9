"""The manifest: what every task of an app accepts, where it routes, and what beat sends it.

Plain frozen dataclasses with a JSON form that is deterministic (sorted keys, no timestamps, a
trailing newline): the same code gives byte-identical files. :func:`loads` validates strictly —
types, required keys, parameter kinds and order — and turns anything it cannot trust (corrupt JSON,
an unknown ``schema`` version, a wrong type) into a :class:`~deploykit.errors.UsageError`; it never
raises anything else. Unknown keys are ignored, so additive fields do not need a new schema.

JSON layout (``schema`` 1)::

    {"schema": 1,
     "generator": {"celery": "5.7.0", "kombu": "5.7.0"},
     "tasks": {"<task name>": {
         "name", "module", "qualname", "file", "line", "bound",
         "parameters": [{"name", "kind", "has_default", "default", "annotation"}],
         "queue", "options": {"acks_late", ...}, "ignore": ["RULE_ID", ...]}},
     "beat": [{"name", "task", "args": ["<repr>"], "kwargs": {"k": "<repr>"}, "schedule", "queue"}]}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deploykit.errors import UsageError

SCHEMA_VERSION = 1

POSITIONAL_ONLY = "POSITIONAL_ONLY"
POSITIONAL_OR_KEYWORD = "POSITIONAL_OR_KEYWORD"
VAR_POSITIONAL = "VAR_POSITIONAL"
KEYWORD_ONLY = "KEYWORD_ONLY"
VAR_KEYWORD = "VAR_KEYWORD"
#: Parameter kinds in the order Python requires them in a signature.
KINDS = (POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD, VAR_POSITIONAL, KEYWORD_ONLY, VAR_KEYWORD)
POSITIONAL_KINDS = frozenset({POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD})
KEYWORD_KINDS = frozenset({POSITIONAL_OR_KEYWORD, KEYWORD_ONLY})
VARIADIC_KINDS = frozenset({VAR_POSITIONAL, VAR_KEYWORD})

#: Task options recorded in the manifest (the ones that matter at deploy time).
OPTION_NAMES = (
    "acks_late",
    "ignore_result",
    "max_retries",
    "reject_on_worker_lost",
    "serializer",
    "soft_time_limit",
    "time_limit",
    "typing",
)

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Parameter:
    """One parameter of a task's signature (``self`` of bound tasks excluded)."""

    name: str
    kind: str
    has_default: bool = False
    #: ``repr()`` of the default (memory addresses removed), ``None`` when there is none.
    default: str | None = None
    #: The annotation as source text, ``None`` when there is none.
    annotation: str | None = None

    @property
    def positional(self) -> bool:
        return self.kind in POSITIONAL_KINDS

    @property
    def keyword(self) -> bool:
        return self.kind in KEYWORD_KINDS

    @property
    def variadic(self) -> bool:
        return self.kind in VARIADIC_KINDS

    @property
    def required(self) -> bool:
        return not self.has_default and not self.variadic


@dataclass(frozen=True)
class Task:
    """A registered task, keyed in the manifest by its name."""

    name: str
    parameters: tuple[Parameter, ...] = ()
    module: str | None = None
    qualname: str | None = None
    #: Source file relative to the project root (POSIX separators); for installed code, relative to
    #: its import root (``proj/billing/tasks.py``) unless the checkout holds the same file
    #: (:mod:`deploykit.manifest.locations`); ``None`` for code with no file.
    file: str | None = None
    line: int | None = None
    #: ``bind=True`` (or a class-based task): the worker passes the task itself as ``self``.
    bound: bool = False
    #: The queue a call with no options routes to (``None`` when the router failed on empty args).
    queue: str | None = None
    options: Mapping[str, Scalar] = field(default_factory=dict)
    #: Rule IDs suppressed by ``# deploykit: ignore[...]`` on the task's decorator/def lines.
    ignore: tuple[str, ...] = ()

    def parameter(self, name: str) -> Parameter | None:
        for param in self.parameters:
            if param.name == name and not param.variadic:
                return param
        return None

    @property
    def positional(self) -> tuple[Parameter, ...]:
        return tuple(p for p in self.parameters if p.positional)

    @property
    def var_positional(self) -> bool:
        return any(p.kind == VAR_POSITIONAL for p in self.parameters)

    @property
    def var_keyword(self) -> bool:
        return any(p.kind == VAR_KEYWORD for p in self.parameters)

    @property
    def location(self) -> str | None:
        if self.file is None:
            return None
        return f"{self.file}:{self.line}" if self.line else self.file

    def signature_text(self) -> str:
        """``(a, b=1, /, *args, c, **kw)``: the signature as Python would print it."""
        parts: list[str] = []
        wrote_star = any(p.kind == VAR_POSITIONAL for p in self.parameters)
        for index, param in enumerate(self.parameters):
            if param.kind == KEYWORD_ONLY and not wrote_star:
                parts.append("*")
                wrote_star = True
            text = {VAR_POSITIONAL: "*", VAR_KEYWORD: "**"}.get(param.kind, "") + param.name
            if param.annotation is not None:
                text += f": {param.annotation}"
            if param.has_default:
                text += (" = " if param.annotation is not None else "=") + str(param.default)
            parts.append(text)
            following = self.parameters[index + 1] if index + 1 < len(self.parameters) else None
            if param.kind == POSITIONAL_ONLY and (following is None or following.kind != POSITIONAL_ONLY):
                parts.append("/")
        return "(" + ", ".join(parts) + ")"


@dataclass(frozen=True)
class BeatEntry:
    """One ``beat_schedule`` entry: argument values as ``repr()`` text (only their shape is used)."""

    name: str
    task: str
    args: tuple[str, ...] = ()
    kwargs: Mapping[str, str] = field(default_factory=dict)
    schedule: str | None = None
    queue: str | None = None

    def key(self) -> tuple[object, ...]:
        """A hashable identity (the dataclass itself holds a dict)."""
        return (
            self.name,
            self.task,
            self.args,
            tuple(sorted(self.kwargs.items())),
            self.schedule,
            self.queue,
        )


@dataclass(frozen=True)
class Manifest:
    """Everything ``deploykit manifest snapshot`` records."""

    tasks: Mapping[str, Task]
    beat: tuple[BeatEntry, ...] = ()
    #: Versions of the libraries that produced the manifest (informational, not compared).
    generator: Mapping[str, str] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def content_equal(self, other: Manifest) -> bool:
        """Same tasks and beat entries (the generator versions do not count)."""
        return dumps(self, with_generator=False) == dumps(other, with_generator=False)


# --- serialisation ---------------------------------------------------------------------------


def _param_dict(param: Parameter) -> dict[str, Any]:
    return {
        "name": param.name,
        "kind": param.kind,
        "has_default": param.has_default,
        "default": param.default,
        "annotation": param.annotation,
    }


def _task_dict(task: Task) -> dict[str, Any]:
    return {
        "name": task.name,
        "module": task.module,
        "qualname": task.qualname,
        "file": task.file,
        "line": task.line,
        "bound": task.bound,
        "parameters": [_param_dict(p) for p in task.parameters],
        "queue": task.queue,
        "options": dict(task.options),
        "ignore": sorted(task.ignore),
    }


def _beat_dict(entry: BeatEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "task": entry.task,
        "args": list(entry.args),
        "kwargs": dict(entry.kwargs),
        "schedule": entry.schedule,
        "queue": entry.queue,
    }


def to_document(manifest: Manifest, *, with_generator: bool = True) -> dict[str, Any]:
    """The manifest as plain JSON-compatible data."""
    document: dict[str, Any] = {
        "schema": manifest.schema,
        "tasks": {name: _task_dict(task) for name, task in manifest.tasks.items()},
        "beat": [_beat_dict(e) for e in sorted(manifest.beat, key=lambda e: (e.name, e.task))],
    }
    if with_generator:
        document["generator"] = dict(manifest.generator)
    return document


def dumps(manifest: Manifest, *, with_generator: bool = True) -> str:
    """Deterministic JSON text: sorted keys, two-space indent, trailing newline."""
    return (
        json.dumps(
            to_document(manifest, with_generator=with_generator),
            sort_keys=True,
            indent=2,
            ensure_ascii=False,
            allow_nan=False,
        )
        + "\n"
    )


# --- validation ------------------------------------------------------------------------------


class _Invalid(Exception):
    pass


def _expect(value: Any, types: type | tuple[type, ...], where: str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _Invalid(f"{where}: expected {_type_names(types)}, got {type(value).__name__}")
    if not isinstance(value, types):
        raise _Invalid(f"{where}: expected {_type_names(types)}, got {type(value).__name__}")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
    return " or ".join("null" if n == "NoneType" else n for n in names)


_STR = str
_OPT_STR = (str, type(None))


def _required(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise _Invalid(f"{where}: missing key {key!r}")
    return obj[key]


def _parse_parameter(raw: Any, where: str) -> Parameter:
    _expect(raw, dict, where)
    name = _expect(_required(raw, "name", where), _STR, f"{where}.name")
    if not name.isidentifier():
        raise _Invalid(f"{where}.name: {name!r} is not an identifier")
    kind = _expect(_required(raw, "kind", where), _STR, f"{where}.kind")
    if kind not in KINDS:
        raise _Invalid(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    has_default = _expect(_required(raw, "has_default", where), bool, f"{where}.has_default")
    default = _expect(raw.get("default"), _OPT_STR, f"{where}.default")
    annotation = _expect(raw.get("annotation"), _OPT_STR, f"{where}.annotation")
    if has_default and kind in VARIADIC_KINDS:
        raise _Invalid(f"{where}: a {kind} parameter cannot have a default")
    return Parameter(name, kind, has_default, default if has_default else None, annotation)


def _check_signature(params: tuple[Parameter, ...], where: str) -> None:
    """The parameters must form a signature Python accepts (order, uniqueness, defaults)."""
    order = {kind: index for index, kind in enumerate(KINDS)}
    seen: set[str] = set()
    last = -1
    defaulted = False
    for param in params:
        rank = order[param.kind]
        if rank < last or (rank == last and param.variadic):
            raise _Invalid(f"{where}: parameter {param.name!r} ({param.kind}) is out of order")
        last = rank
        if param.name in seen:
            raise _Invalid(f"{where}: duplicate parameter {param.name!r}")
        seen.add(param.name)
        if param.positional:
            if param.has_default:
                defaulted = True
            elif defaulted:
                raise _Invalid(f"{where}: required parameter {param.name!r} follows a default")


def _scalar(value: Any, where: str) -> Scalar:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise _Invalid(f"{where}: expected a string, number, boolean or null")


def _parse_task(key: str, raw: Any) -> Task:
    where = f"tasks[{key!r}]"
    _expect(raw, dict, where)
    name = _expect(_required(raw, "name", where), _STR, f"{where}.name")
    if name != key:
        raise _Invalid(f"{where}.name: {name!r} does not match its key")
    params_raw = _expect(_required(raw, "parameters", where), list, f"{where}.parameters")
    params = tuple(_parse_parameter(p, f"{where}.parameters[{i}]") for i, p in enumerate(params_raw))
    _check_signature(params, where)
    line = _expect(raw.get("line"), (int, type(None)), f"{where}.line")
    if line is not None and line < 1:
        raise _Invalid(f"{where}.line: must be >= 1")
    options_raw = _expect(raw.get("options", {}), dict, f"{where}.options")
    options = {str(k): _scalar(v, f"{where}.options.{k}") for k, v in sorted(options_raw.items())}
    ignore_raw = _expect(raw.get("ignore", []), list, f"{where}.ignore")
    ignore = tuple(sorted(_expect(i, _STR, f"{where}.ignore[]") for i in ignore_raw))
    return Task(
        name=name,
        parameters=params,
        module=_expect(raw.get("module"), _OPT_STR, f"{where}.module"),
        qualname=_expect(raw.get("qualname"), _OPT_STR, f"{where}.qualname"),
        file=_expect(raw.get("file"), _OPT_STR, f"{where}.file"),
        line=line,
        bound=_expect(raw.get("bound", False), bool, f"{where}.bound"),
        queue=_expect(raw.get("queue"), _OPT_STR, f"{where}.queue"),
        options=options,
        ignore=ignore,
    )


def _parse_beat(raw: Any, where: str) -> BeatEntry:
    _expect(raw, dict, where)
    args = _expect(raw.get("args", []), list, f"{where}.args")
    kwargs = _expect(raw.get("kwargs", {}), dict, f"{where}.kwargs")
    return BeatEntry(
        name=_expect(_required(raw, "name", where), _STR, f"{where}.name"),
        task=_expect(_required(raw, "task", where), _STR, f"{where}.task"),
        args=tuple(_expect(a, _STR, f"{where}.args[]") for a in args),
        kwargs={str(k): _expect(v, _STR, f"{where}.kwargs.{k}") for k, v in sorted(kwargs.items())},
        schedule=_expect(raw.get("schedule"), _OPT_STR, f"{where}.schedule"),
        queue=_expect(raw.get("queue"), _OPT_STR, f"{where}.queue"),
    )


def from_document(document: Any, *, source: str = "manifest") -> Manifest:
    """Validate parsed JSON and build the manifest; :class:`UsageError` when it is not one."""
    try:
        _expect(document, dict, "top level")
        schema = _required(document, "schema", "top level")
        if isinstance(schema, bool) or not isinstance(schema, int):
            raise _Invalid(f"schema: expected an integer version, got {schema!r}")
        if schema > SCHEMA_VERSION:
            raise UsageError(
                f"{source}: schema version {schema} is newer than this deploykit understands "
                f"(up to {SCHEMA_VERSION}): upgrade deploykit"
            )
        if schema < 1:
            raise _Invalid(f"schema: unknown version {schema}")
        tasks_raw = _expect(_required(document, "tasks", "top level"), dict, "tasks")
        tasks = {key: _parse_task(key, tasks_raw[key]) for key in sorted(tasks_raw)}
        beat_raw = _expect(document.get("beat", []), list, "beat")
        beat = tuple(_parse_beat(b, f"beat[{i}]") for i, b in enumerate(beat_raw))
        generator_raw = _expect(document.get("generator", {}), dict, "generator")
        generator = {str(k): _expect(v, _STR, f"generator.{k}") for k, v in sorted(generator_raw.items())}
    except _Invalid as exc:
        raise UsageError(f"{source} is not a valid deploykit manifest: {exc}") from None
    return Manifest(tasks=tasks, beat=beat, generator=generator, schema=schema)


def loads(text: str | bytes, *, source: str = "manifest") -> Manifest:
    """Parse and validate manifest JSON text."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UsageError(f"{source} is not valid JSON: {exc}") from None
    return from_document(document, source=source)


def read(path: Any) -> Manifest:
    """Read and validate the manifest file at ``path`` (a missing file is a usage error)."""
    from pathlib import Path

    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise UsageError(
            f"no manifest at {file}: create it with `deploykit manifest snapshot` and commit it"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
    return loads(data, source=str(file))
