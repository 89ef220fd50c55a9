"""Build a :class:`~deploykit.manifest.model.Manifest` from a live Celery app.

The app is imported by :func:`deploykit.userapp.load_app` (the only place deploykit imports user
code); then, like a worker, ``app.loader.import_default_modules()`` imports every task module:
``imports``/``include`` and the lazy ``autodiscover_tasks()`` packages, which for Django projects
(the fixup is active when ``DJANGO_SETTINGS_MODULE`` is set) also runs ``django.setup()`` first.
Any exception raised by user code becomes a :class:`~deploykit.errors.UsageError` (exit 2).

Signatures come from ``inspect.signature(task.run)`` — not Celery's ``__header__``, which ignores
``functools.wraps``, loses ``/`` and does not exist for class-based tasks
(shared/docs/celery-internals.md §6.3).
"""

from __future__ import annotations

import inspect
import linecache
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deploykit.errors import UsageError
from deploykit.manifest.model import OPTION_NAMES, BeatEntry, Manifest, Parameter, Scalar, Task

_ADDRESS = re.compile(r"\s+at 0x[0-9a-fA-F]+")
#: ``# deploykit: ignore[RULE_A, RULE_B]``; a bare ``# deploykit: ignore`` suppresses every rule.
IGNORE_COMMENT = re.compile(r"#\s*deploykit:\s*ignore(?:\[(?P<rules>[^\]]*)\])?", re.IGNORECASE)
_DEF = re.compile(r"^\s*(?:async\s+)?def\s")
#: How far past the first decorator line we look for the end of a ``def`` header.
_HEADER_SCAN_LINES = 60


def describe(exc: BaseException) -> str:
    from deploykit.userapp import _describe

    return _describe(exc)


def _stable_repr(value: Any, depth: int = 0) -> str:
    # Set order depends on PYTHONHASHSEED: sort the members' reprs so the manifest stays stable.
    if depth < 20:
        if type(value) in (set, frozenset):
            members = sorted(_stable_repr(v, depth + 1) for v in value)
            if not members:
                return repr(value)
            inner = "{" + ", ".join(members) + "}"
            return inner if type(value) is set else f"frozenset({inner})"
        if type(value) in (list, tuple) and any(
            type(v) in (set, frozenset, list, tuple, dict) for v in value
        ):
            items = [_stable_repr(v, depth + 1) for v in value]
            if type(value) is list:
                return "[" + ", ".join(items) + "]"
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        if type(value) is dict and any(
            type(v) in (set, frozenset, list, tuple, dict) for v in value.values()
        ):
            return "{" + ", ".join(f"{k!r}: {_stable_repr(v, depth + 1)}" for k, v in value.items()) + "}"
    return repr(value)


def safe_repr(value: Any) -> str:
    """``repr(value)`` without memory addresses or set ordering (stable across runs), never raising."""
    try:
        text = _stable_repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return _ADDRESS.sub("", text)


def _annotation_text(annotation: Any) -> str | None:
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        return annotation
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
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float) and value == value and value not in (float("inf"), float("-inf")):
        return value
    return safe_repr(value)


class _Paths:
    """Source files relative to the project root, resolved once per file."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._cache: dict[str, str | None] = {}

    def relative(self, filename: str) -> str | None:
        if filename not in self._cache:
            result: str | None = None
            if filename and not filename.startswith("<"):
                try:
                    result = Path(filename).resolve().relative_to(self.root).as_posix()
                except (ValueError, OSError):
                    result = None
            self._cache[filename] = result
        return self._cache[filename]


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
    """The queue a call with no call-time options and empty args routes to (celery-internals §7)."""
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
    """The manifest of an app whose task modules are already imported."""
    try:
        registry = app.tasks  # finalizes the app: evaluates pending (shared_)task decorators
        names = sorted(name for name in registry if not name.startswith("celery."))
        paths = _Paths(root)
        tasks = {name: task_entry(app, registry[name], paths) for name in names}
        beat = beat_entries(app, registry)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"cannot collect the app's tasks: {describe(exc)}") from None
    return Manifest(tasks=tasks, beat=beat, generator=generator_versions())


def import_task_modules(app: Any) -> None:
    """Import every module a worker would (``imports``, ``include``, autodiscovery, Django setup)."""
    try:
        app.loader.import_default_modules()
    except BaseException as exc:  # user code can raise anything, SystemExit included
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageError(f"cannot import the app's task modules: {describe(exc)}") from None


def snapshot(app_spec: str | None, root: Path | None = None, *, app: Any = None) -> Manifest:
    """Import the app named by ``app_spec`` (or use ``app``), load its task modules, collect."""
    if app is None:
        if not app_spec:
            raise UsageError(
                "no Celery app given: use -A MODULE[:ATTR] (or DEPLOYKIT_APP, [tool.deploykit] app)"
            )
        from deploykit.userapp import load_app

        app = load_app(app_spec)
    import_task_modules(app)
    return collect_app(app, root if root is not None else Path.cwd())
