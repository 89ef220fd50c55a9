"""Build a :class:`~deploykit.manifest.model.Manifest` from a live Celery app.

The app is imported and set up as a worker does by :mod:`deploykit.userapp` (configuration,
``django.setup()``, ``app.loader.import_default_modules()``, finalize): the only place deploykit
runs user code. Any exception raised by user code becomes a :class:`~deploykit.errors.UsageError`
(exit 2); errors Celery swallows (a signal handler that raises) are reported as warnings.

Signatures come from ``inspect.signature(task.run)`` — not Celery's ``__header__``, which ignores
``functools.wraps``, loses ``/`` and does not exist for class-based tasks. Default values and beat
arguments are recorded as :func:`~deploykit.userapp.safe_repr` text: plain values as ``repr()``,
anything whose ``repr`` could run user code (a lazy translation) as ``<module.Type object>``.
"""

from __future__ import annotations

import enum
import inspect
import linecache
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deploykit.errors import UsageError
from deploykit.manifest.builtins import is_builtin_task
from deploykit.manifest.locations import SourcePaths
from deploykit.manifest.model import OPTION_NAMES, BeatEntry, Manifest, Parameter, Scalar, Task
from deploykit.userapp import guarded, safe_repr

__all__ = ["collect_app", "safe_repr", "snapshot"]

_ADDRESS = re.compile(r"\s+at 0x[0-9a-fA-F]+")
_ANNOTATION_MODULES = ("typing", "typing_extensions", "builtins", "collections.abc", "types")
#: ``# deploykit: ignore[RULE_A, RULE_B]``; a bare ``# deploykit: ignore`` suppresses every rule.
IGNORE_COMMENT = re.compile(r"#\s*deploykit:\s*ignore(?:\[(?P<rules>[^\]]*)\])?", re.IGNORECASE)
_DEF = re.compile(r"^\s*(?:async\s+)?def\s")
#: How far past the first decorator line we look for the end of a ``def`` header.
_HEADER_SCAN_LINES = 60


def _annotation_text(annotation: Any) -> str | None:
    if annotation is inspect.Parameter.empty:
        return None
    if type(annotation) is str:
        return annotation
    # Classes and typing constructs format without user code; anything else is a user object.
    kind = type(annotation)
    if not (issubclass(kind, type) or kind.__module__ in _ANNOTATION_MODULES):
        return safe_repr(annotation)
    try:
        return _ADDRESS.sub("", inspect.formatannotation(annotation))
    except Exception:
        return safe_repr(annotation)


def parameters_of(func: Any) -> tuple[Parameter, ...]:
    """The parameters of ``inspect.signature(func)`` (follows ``__wrapped__``, keeps ``/``)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature: they accept anything
        return (Parameter("args", "VAR_POSITIONAL"), Parameter("kwargs", "VAR_KEYWORD"))
    params = []
    for param in signature.parameters.values():
        has_default = param.default is not inspect.Parameter.empty
        params.append(
            Parameter(
                name=param.name,
                kind=param.kind.name,
                has_default=has_default,
                default=safe_repr(param.default) if has_default else None,
                annotation=_annotation_text(param.annotation),
            )
        )
    return tuple(params)


def _scalar(value: Any) -> Scalar:
    kind = type(value)  # not isinstance(): it asks a lazy object for its __class__, evaluating it
    if value is None or kind in (str, bool, int):
        return value  # type: ignore[no-any-return]
    if kind is float and value == value and value not in (float("inf"), float("-inf")):
        return value  # type: ignore[no-any-return]
    if issubclass(kind, enum.Enum):  # an IntEnum/StrEnum option is recorded as its value
        inner = vars(value).get("_value_")
        if type(inner) in (str, bool, int):
            return inner  # type: ignore[no-any-return]
    elif issubclass(kind, str):
        return str.__str__(value)
    elif issubclass(kind, int) and not issubclass(kind, bool):
        return int.__int__(value)
    return safe_repr(value)


# Manifest locations (project-relative, or package-relative for installed code): see that module.
_Paths = SourcePaths


def ignored_rules(lines: Iterable[str]) -> tuple[str, ...]:
    """Rule IDs named by ``# deploykit: ignore[...]`` comments in ``lines`` (``*`` for a bare one)."""
    found: set[str] = set()
    for text in lines:
        for match in IGNORE_COMMENT.finditer(text):
            rules = match.group("rules")
            if rules is None:
                found.add("*")
            else:
                found.update(r.strip().upper() for r in rules.split(",") if r.strip())
    return tuple(sorted(found))


def header_lines(filename: str, first_line: int, class_name: str | None = None) -> list[str]:
    """The decorator and ``def`` header lines of a function starting at ``first_line``.

    For a class-based task (``class_name`` given) the ``class`` line above ``run`` counts too.
    """
    lines = linecache.getlines(filename)
    if not lines or first_line < 1:
        return []
    picked: list[str] = []
    in_def = False
    for index in range(first_line - 1, min(len(lines), first_line - 1 + _HEADER_SCAN_LINES)):
        text = lines[index]
        picked.append(text)
        code = text.split("#", 1)[0].rstrip()
        if _DEF.match(code):
            in_def = True
        if in_def and code.endswith(":"):
            break
    if class_name:
        pattern = re.compile(rf"^\s*class\s+{re.escape(class_name)}\b")
        for index in range(first_line - 2, -1, -1):
            if pattern.match(lines[index]):
                picked.append(lines[index])
                # decorators of the class
                above = index - 1
                while above >= 0 and lines[above].lstrip().startswith("@"):
                    picked.append(lines[above])
                    above -= 1
                break
    return picked


def _class_line(filename: str, before: int, class_name: str) -> int | None:
    lines = linecache.getlines(filename)
    pattern = re.compile(rf"^\s*class\s+{re.escape(class_name)}\b")
    for index in range(min(before, len(lines)) - 2, -1, -1):
        if pattern.match(lines[index]):
            return index + 1
    return None


def _route(app: Any, name: str, options: dict[str, Any], task: Any) -> str | None:
    """The queue a call with no call-time options and empty args routes to.

    Celery's own routing decides it (celery/app/routes.py, Router.route).
    """
    try:
        route = app.amqp.router.route(options, name, (), {}, task)
    except Exception:  # a router function that needs real arguments
        return None
    queue = route.get("queue")
    if queue is None:
        return None
    return str(getattr(queue, "name", queue))


def task_entry(app: Any, task: Any, paths: _Paths) -> Task:
    """The manifest entry for one registered task."""
    run = task.run
    bound = inspect.ismethod(run)
    function = inspect.unwrap(getattr(run, "__func__", run))
    class_based = not hasattr(type(task), "__wrapped__")  # app.task sets __wrapped__ = run
    module: str | None
    qualname: str | None
    if class_based:
        module, qualname = type(task).__module__, type(task).__qualname__
    else:
        module = getattr(function, "__module__", None)
        qualname = getattr(function, "__qualname__", None)
    code = getattr(function, "__code__", None)
    filename = code.co_filename if code is not None else ""
    line: int | None = code.co_firstlineno if code is not None else None
    ignore: tuple[str, ...] = ()
    if line is not None:
        class_name = type(task).__name__ if class_based else None
        ignore = ignored_rules(header_lines(filename, line, class_name))
        if class_name:
            line = _class_line(filename, line, class_name) or line
    try:
        exec_options = dict(task._get_exec_options())
    except Exception:
        exec_options = {}
    options = {name: _scalar(getattr(task, name, None)) for name in OPTION_NAMES}
    file = paths.relative(filename)
    return Task(
        name=task.name,
        parameters=parameters_of(run),
        module=module,
        qualname=qualname,
        file=file,
        line=line if file is not None else None,
        bound=bound,
        queue=_route(app, task.name, exec_options, task),
        options=options,
        ignore=ignore,
    )


def beat_entries(app: Any, tasks: Any) -> tuple[BeatEntry, ...]:
    """The app's static ``beat_schedule`` (entries added at runtime are not seen)."""
    schedule = app.conf.beat_schedule or {}
    entries = []
    for name in sorted(schedule, key=str):
        raw = schedule[name]
        if not isinstance(raw, dict) or not isinstance(raw.get("task"), str):
            continue
        args = raw.get("args") or ()
        if not isinstance(args, (list, tuple)):
            args = (args,)
        kwargs = raw.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            kwargs = {}
        options = dict(raw.get("options") or {})
        task_name = raw["task"]
        queue = options.get("queue")
        if queue is None:
            queue = _route(app, task_name, options, tasks.get(task_name))
        entries.append(
            BeatEntry(
                name=str(name),
                task=task_name,
                args=tuple(safe_repr(a) for a in args),
                kwargs={str(k): safe_repr(v) for k, v in sorted(kwargs.items(), key=lambda kv: str(kv[0]))},
                schedule=safe_repr(raw.get("schedule")) if "schedule" in raw else None,
                queue=str(getattr(queue, "name", queue)) if queue is not None else None,
            )
        )
    return tuple(entries)


def generator_versions() -> dict[str, str]:
    import celery
    import kombu

    return {"celery": str(celery.__version__), "kombu": str(kombu.__version__)}


def collect_app(app: Any, root: Path) -> Manifest:
    """The manifest of an app already set up (:func:`deploykit.userapp.prepare_app`)."""
    with guarded("cannot collect the app's tasks"):
        registry = app.tasks  # finalizes the app if it was not: evaluates pending task decorators
        names = sorted(name for name, task in registry.items() if not is_builtin_task(name, task))
        paths = _Paths(root)
        tasks = {name: task_entry(app, registry[name], paths) for name in names}
        beat = beat_entries(app, registry)
    return Manifest(tasks=tasks, beat=beat, generator=generator_versions())


def snapshot(app_spec: str | None, root: Path | None = None, *, app: Any = None) -> Manifest:
    """Load the app named by ``app_spec`` (or set up ``app``) as a worker does, and collect."""
    from deploykit.userapp import load_app, prepare_app

    if app is None:
        if not app_spec:
            raise UsageError(
                "no Celery app given: use -A MODULE[:ATTR] (or DEPLOYKIT_APP, [tool.deploykit] app)"
            )
        app = load_app(app_spec)
    else:
        prepare_app(app)  # a no-op for an app deploykit.userapp.load_app returned
    return collect_app(app, root if root is not None else Path.cwd())


def import_task_modules(app: Any) -> None:
    """Set the app up as a worker does (see :func:`deploykit.userapp.prepare_app`)."""
    from deploykit.userapp import prepare_app

    prepare_app(app)
