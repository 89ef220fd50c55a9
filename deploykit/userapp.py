"""Loading the user's Celery app the way ``celery worker`` does: the only place deploykit runs user code.

``-A/--app`` works like ``celery -A``: ``module:attribute``, or ``module`` in which an attribute
named ``app`` or ``celery`` (or the ``module.celery`` submodule's) is a Celery app. The current
directory is put on ``sys.path`` first, as Celery does.

Every command that takes ``-A`` then sets the app up as a worker does before it consumes
(``celery/bin/celery.py`` finds the app; ``WorkController.__init__`` calls
``app.loader.init_worker()``, which imports the default modules; ``on_init_blueprint`` finalizes):

1. its configuration is loaded (``on_configure``/``on_after_configure`` handlers; for
   ``config_from_object("django.conf:settings")`` the Django settings module);
2. ``django.setup()`` when Django is in use (``DJANGO_SETTINGS_MODULE`` is set or the app reads
   ``django.conf:settings``): the ``AppConfig.ready()`` hooks run, which may declare queues and routes;
3. ``app.loader.import_default_modules()``: the ``import_modules`` signal (Celery's Django fixup,
   the lazy ``autodiscover_tasks()`` packages), then ``imports``/``include``;
4. ``app.finalize()``: pending ``@task``/``@shared_task`` decorators, ``on_after_finalize`` handlers.

The worker-process signals (``celeryd_init``, ``worker_init``, ``worker_process_init``) are not
sent: they belong to a running worker. Any exception from user code in these steps is a
:class:`~deploykit.errors.UsageError` (exit 2) with one line naming the step (and the Django
settings module) and where the error was raised. Celery only logs exceptions raised by signal
handlers (``celery/utils/dispatch/signal.py``, ``Signal.send``), and what a handler would have set
up after the failure (periodic tasks, queues) is then silently missing: those, and errors logged
while loading, become one-line warnings (:func:`load_warnings`).

Settings and other user objects are never evaluated for display: :func:`safe_repr` only calls
``repr()`` on values whose ``repr`` is known to run no user code (a Django lazy translation
evaluates the translation machinery, and fails before ``django.setup()``).
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import enum
import fractions
import importlib
import logging
import os
import pathlib
import re
import sys
import sysconfig
import traceback
import types
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from deploykit.errors import UsageError

Warn = Callable[[str], None]

#: Packages whose frames are not "where" a user's error was raised (the deepest other frame is).
_LIBRARY_PACKAGES = ("celery", "kombu", "billiard", "vine", "django", "deploykit", "importlib")
_MAX_WARNINGS = 20
_MESSAGE_CHARS = 300

_prepared: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------------------------
# describing exceptions and values without running user code
_DEPLOYKIT_DIR = str(pathlib.Path(__file__).resolve().parent) + os.sep


def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(os.path.realpath(paths[key]) + os.sep for key in ("stdlib", "platstdlib") if key in paths)


def _installed_package(real: str) -> str | None:
    """The top-level package of a file under ``site-packages``/``dist-packages`` (else ``None``)."""
    parts = pathlib.PurePath(real).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in ("site-packages", "dist-packages"):
            return parts[i + 1]
    return None


def _frame_rank(filename: str, cwd: str, stdlib: tuple[str, ...]) -> int:
    """How likely a frame is the user's own line: 3 the project (cwd), 2 other code outside the
    installed packages, 1 an installed package (an app installed from a wheel, or a client library
    it called), 0 the stdlib, Celery, Django and deploykit."""
    if filename.startswith("<"):
        return 0
    real = os.path.realpath(filename)
    package = _installed_package(real)
    if real.startswith(_DEPLOYKIT_DIR) or package in _LIBRARY_PACKAGES:
        return 0
    if package is not None:
        return 1
    if real.startswith(stdlib):
        return 0
    return 3 if real.startswith(cwd) else 2


def _where(exc: BaseException) -> str:
    """`` (path:line)`` of the user's line: the deepest frame of the best rank (see :func:`_frame_rank`)."""
    if isinstance(exc, SyntaxError) and isinstance(exc.filename, str):  # where the bad source is
        frames = [traceback.FrameSummary(exc.filename, exc.lineno or 0, "")]
    else:
        frames = traceback.extract_tb(exc.__traceback__)
    cwd = os.path.realpath(os.getcwd()) + os.sep  # noqa: PTH109 - string paths throughout
    stdlib = _stdlib_dirs()
    ranked = [(_frame_rank(f.filename, cwd, stdlib), index, f) for index, f in enumerate(frames)]
    best = max(ranked, default=None, key=lambda item: (item[0], item[1]))
    if best is None or best[0] == 0:
        return ""  # raised by a library (a module not found): the message says it all
    path = best[2].filename
    relative = os.path.relpath(path)
    return f" ({path if relative.startswith('..') else relative}:{best[2].lineno})"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _MESSAGE_CHARS else line[: _MESSAGE_CHARS - 3] + "..."


def _exception_text(exc: BaseException) -> str:
    try:
        message = _first_line(str(exc))
    except Exception:  # a user exception whose __str__ fails
        message = ""
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def describe_exception(exc: BaseException, *, where: bool = True) -> str:
    """``Type: message (path:line)``, one line, the location in the user's code when there is one
    (``where=False``: without it, e.g. for a database error, where no line of the user's is at fault)."""
    return _exception_text(exc) + (_where(exc) if where else "")


_describe = describe_exception  # the name other modules used

_ADDRESS = re.compile(r"\s+at 0x[0-9a-fA-F]+")
#: Exact types whose ``repr`` runs no user code (subclasses may override ``__repr__``).
_ATOMS: frozenset[type] = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        type(Ellipsis),
        type(NotImplemented),
        range,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        datetime.timezone,
        decimal.Decimal,
        fractions.Fraction,
        uuid.UUID,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        type(pathlib.Path()),
        types.FunctionType,
        types.BuiltinFunctionType,
        types.MethodDescriptorType,
        types.WrapperDescriptorType,
    }
)
#: Modules whose types' ``repr`` only formats plain values (beat schedules).
_TRUSTED_MODULES = ("celery.schedules",)
_MAX_DEPTH = 20


def _own_repr(cls: type) -> Any:
    """The ``__repr__`` that ``repr()`` would call for an instance of ``cls`` (no descriptor runs)."""
    for klass in cls.__mro__:
        if "__repr__" in vars(klass):
            return vars(klass)["__repr__"]
    return object.__repr__


def _placeholder(value: Any) -> str:
    # A class made inside a function (Django's ``lazy()`` makes ``lazy.<locals>.__proxy__``) is
    # named by its first importable base: ``<django.utils.functional.Promise object>``.
    cls = next((c for c in type(value).__mro__ if "<locals>" not in c.__qualname__), type(value))
    module = getattr(cls, "__module__", None)
    name = cls.__qualname__
    return (
        f"<{module}.{name} object>"
        if isinstance(module, str) and module != "builtins"
        else f"<{name} object>"
    )


def _repr(value: Any, depth: int) -> str:
    cls = type(value)
    if cls in _ATOMS:
        return repr(value)
    if depth >= _MAX_DEPTH:
        return "..."
    if cls in (list, tuple):
        items = [_repr(v, depth + 1) for v in value]
        if cls is list:
            return "[" + ", ".join(items) + "]"
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if cls is dict:
        return (
            "{" + ", ".join(f"{_repr(k, depth + 1)}: {_repr(v, depth + 1)}" for k, v in value.items()) + "}"
        )
    if cls in (set, frozenset):
        # Set order depends on PYTHONHASHSEED: sort the members so the text is stable across runs.
        members = sorted(_repr(v, depth + 1) for v in value)
        if not members:
            return f"{cls.__name__}()"
        inner = "{" + ", ".join(members) + "}"
        return inner if cls is set else f"frozenset({inner})"
    if issubclass(cls, type) and _own_repr(cls) is type.__repr__:
        return repr(value)  # a class: "<class 'module.Name'>"
    implementation = _own_repr(cls)
    if issubclass(cls, enum.Enum) and getattr(implementation, "__module__", None) == "enum":
        member = vars(value)
        if type(member.get("_value_")) in _ATOMS:
            return repr(value)
    if cls.__module__ in _TRUSTED_MODULES:
        return repr(value)
    return _placeholder(value)


def safe_repr(value: Any) -> str:
    """A stable ``repr`` of plain values; ``<module.Type object>`` for anything whose ``repr`` could
    run user code (a lazy translation, a lazy object, a custom ``__repr__``). Never raises."""
    try:
        text = _repr(value, 0)
    except Exception:
        try:
            text = f"<{type(value).__qualname__} object>"
        except Exception:
            text = "<object>"
    return _ADDRESS.sub("", text)


def plain_value(value: Any, depth: int = 0) -> Any:
    """A setting as JSON-like data (dicts, lists, numbers, strings); other objects as :func:`safe_repr`."""
    cls = type(value)
    if value is None or cls in (bool, int, float, str):
        return value
    if depth >= _MAX_DEPTH:
        return safe_repr(value)
    try:
        if issubclass(cls, Mapping):
            return {
                (k if type(k) is str else safe_repr(k)): plain_value(v, depth + 1) for k, v in value.items()
            }
        if cls in (set, frozenset):
            return sorted((plain_value(v, depth + 1) for v in value), key=safe_repr)
        if cls in (list, tuple):
            return [plain_value(v, depth + 1) for v in value]
    except Exception:
        pass
    return safe_repr(value)


# --------------------------------------------------------------------------------------------
# one guard for every access to user code
@contextlib.contextmanager
def guarded(what: str) -> Iterator[None]:
    """Turn anything user code raises (``SystemExit`` included) into a one-line usage error."""
    try:
        yield
    except UsageError:
        raise
    except BaseException as exc:  # user code can raise anything
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageError(f"{what}: {describe_exception(exc)}") from None


# --------------------------------------------------------------------------------------------
# importing the app
def _is_celery_app(obj: Any) -> bool:
    from celery import Celery

    return issubclass(type(obj), Celery)


def _unproxy(obj: Any) -> Any:
    """``celery.current_app`` and other Celery proxies stand for the app behind them."""
    from celery.local import Proxy

    if issubclass(type(obj), Proxy):
        with guarded("cannot resolve the app proxy"):
            return obj._get_current_object()
    return obj


def import_app(spec: str) -> Any:
    """Import and return the Celery app named by ``spec`` (the module only: see :func:`load_app`)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or any(part == "" for part in module_name.split(".")):
        raise UsageError(f"invalid app {spec!r}: expected MODULE or MODULE:ATTRIBUTE")
    cwd = os.getcwd()  # noqa: PTH109 - sys.path holds strings, as `celery -A` puts it there
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    with guarded(f"cannot import app module {module_name!r}"):
        module = importlib.import_module(module_name)

    if attribute:
        obj: Any = module
        with guarded(f"cannot read {spec!r}"):
            for part in attribute.split("."):
                if not hasattr(obj, part):
                    raise UsageError(f"module {module_name!r} has no attribute {attribute!r}")
                obj = getattr(obj, part)
        obj = _unproxy(obj)
        if callable(obj) and not _is_celery_app(obj):
            with guarded(f"calling {spec!r} failed"):
                obj = _unproxy(obj())
        if not _is_celery_app(obj):
            raise UsageError(f"{spec!r} is not a Celery app (got {type(obj).__name__})")
        return obj

    for name in ("app", "celery"):
        with guarded(f"cannot read {module_name}.{name}"):
            candidate = getattr(module, name, None)
        if candidate is not None and _is_celery_app(candidate):
            return candidate
    sub = None
    with guarded(f"cannot import app module {module_name + '.celery'!r}"):
        try:
            sub = importlib.import_module(module_name + ".celery")
        except ModuleNotFoundError as exc:
            if exc.name != module_name + ".celery":
                raise
    if sub is not None:
        for name in ("app", "celery"):
            candidate = getattr(sub, name, None)
            if candidate is not None and _is_celery_app(candidate):
                return candidate
    found = [value for value in vars(module).values() if _is_celery_app(value)]
    if len(found) == 1:
        return found[0]
    raise UsageError(f"no Celery app found in module {module_name!r}: name it as {module_name}:ATTRIBUTE")


# --------------------------------------------------------------------------------------------
# setting it up as a worker does
def _django_source(app: Any) -> bool:
    """Does the app read its configuration from ``django.conf:settings``?"""
    source = vars(app).get("_config_source")
    if type(source) is str:
        return source.split(":")[0].strip() == "django.conf"
    return source is not None and str(type(source).__module__).startswith("django.conf")


def _settings_module() -> str | None:
    return os.environ.get("DJANGO_SETTINGS_MODULE") or None


def _settings_label() -> str:
    module = _settings_module()
    if module is None:
        return "the Django settings"
    return f"the Django settings module {module!r} (DJANGO_SETTINGS_MODULE)"


def _receiver_name(receiver: Any) -> str:
    function = getattr(receiver, "__func__", receiver)
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}.{qualname}"
    return f"<{type(receiver).__qualname__}>"


class _LoadWatch(logging.Handler):
    """Collects what goes wrong quietly while the app loads: exceptions that Celery's signal
    dispatch catches, and errors user code logs."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.found: list[str] = []

    def add(self, line: str) -> None:
        if line not in self.found:
            self.found.append(line)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "celery.utils.dispatch.signal":
            return  # reported by the signal watch, with the handler's name
        try:
            message = _first_line(record.getMessage())
        except Exception:
            message = _first_line(str(record.msg))
        exc = record.exc_info[1] if record.exc_info else None
        detail = f": {describe_exception(exc)}" if exc is not None else ""
        self.add(f"error logged while loading the app by {record.name}: {message}{detail}")

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        from celery.utils.dispatch import signal as dispatch

        original = dispatch.Signal.send
        watch = self

        def send(signal: Any, sender: Any, **named: Any) -> Any:
            responses = original(signal, sender, **named)
            for receiver, response in responses:
                if issubclass(type(response), BaseException):
                    name = getattr(signal, "name", None) or "a Celery signal"
                    watch.add(
                        f"{name} handler {_receiver_name(receiver)} raised "
                        f"{describe_exception(response)}: what it sets up after that point "
                        "(periodic tasks, queues, routes) is missing"
                    )
            return responses

        dispatch.Signal.send = send
        root = logging.getLogger()
        try:
            # What the app prints while it loads ("You are running pretalx as root, why?", a
            # connectivity check's report) must not corrupt our stdout (--json, `snapshot -o -`).
            with contextlib.redirect_stdout(sys.stderr):
                yield
        finally:
            dispatch.Signal.send = original
            root.removeHandler(self)

    def attach(self) -> None:
        """(Re)attach to the root logger: Django's ``LOGGING`` may have replaced its handlers."""
        root = logging.getLogger()
        if self not in root.handlers:
            root.addHandler(self)


def _load_config(app: Any) -> None:
    """Load the app's configuration now, letting its errors out.

    (Celery's own ``Settings.finalize()`` looks a key up and ignores ``KeyError``, which would
    hide a settings module's ``os.environ["SECRET_KEY"]``.)
    """
    from celery.app.base import PendingConfiguration

    conf = app.conf  # loads it, unless something was set on app.conf before
    for mapping in list(getattr(conf, "maps", ())):
        if issubclass(type(mapping), PendingConfiguration):
            _ = mapping.data  # what the first key lookup does: load the configuration


def _require_settings_module(app: Any) -> None:
    """One clear line instead of Django's ``ImproperlyConfigured`` on the first settings access."""
    if not _django_source(app) or _settings_module():
        return
    try:
        from django.conf import settings
    except ImportError:
        return  # config_from_object reports that Django is missing
    if not settings.configured:  # settings.configure() was not called either
        raise UsageError(
            "the app reads its settings from django.conf:settings, but DJANGO_SETTINGS_MODULE is not "
            "set: set it to the project's settings module (as its manage.py does)"
        )


def _setup_django(app: Any) -> None:
    if not (_settings_module() or _django_source(app)):
        return
    try:
        import django
        from django.apps import apps
    except ImportError:
        return
    if apps.ready:
        return
    with guarded(f"django.setup() failed with {_settings_label()}"):
        django.setup()


def _set_up(app: Any, watch: _LoadWatch) -> None:
    watch.attach()
    _require_settings_module(app)
    what = f"cannot load the app's configuration from {_settings_label()}"
    with guarded(what if _django_source(app) else "cannot load the app's configuration"):
        _load_config(app)
    _setup_django(app)
    watch.attach()
    with guarded("cannot import the app's task modules"):
        app.loader.import_default_modules()
    watch.attach()
    with guarded("cannot finalize the app (its task decorators and on_after_finalize handlers)"):
        app.finalize()


def _record(app: Any, watch: _LoadWatch, warn: Warn | None) -> tuple[str, ...]:
    found = watch.found
    if len(found) > _MAX_WARNINGS:
        more = len(found) - _MAX_WARNINGS
        found = [*found[:_MAX_WARNINGS], f"and {more} more errors while loading the app"]
    result = tuple(found)
    _prepared[app] = result
    if warn is not None:
        for line in result:
            warn(line)
    return result


def prepare_app(app: Any, *, warn: Warn | None = None) -> tuple[str, ...]:
    """Set ``app`` up as ``celery worker`` does (idempotent); return the load warnings.

    New warnings are also passed to ``warn``, once.
    """
    if app in _prepared:
        return _prepared[app]
    watch = _LoadWatch()
    with watch.watching():
        _set_up(app, watch)
    return _record(app, watch, warn)


def load_warnings(app: Any) -> tuple[str, ...]:
    """The warnings :func:`prepare_app` found for ``app`` (empty if it was not prepared)."""
    return _prepared.get(app, ())


def load_app(spec: str, *, warn: Warn | None = None) -> Any:
    """Import the Celery app named by ``spec`` and set it up as a worker does.

    What goes wrong quietly from the import on (errors logged, signal handlers that raise) is
    passed to ``warn``, one line each, the first time the app is loaded.
    """
    watch = _LoadWatch()
    with watch.watching():
        watch.attach()
        app = import_app(spec)
        if app in _prepared:
            return app
        _set_up(app, watch)
    _record(app, watch, warn)
    return app


def read_settings(app: Any, keys: Iterable[str]) -> tuple[dict[str, Any], frozenset[str]]:
    """The app's values of ``keys`` (new-style names; a ``namespace`` such as ``CELERY_`` and old
    names are followed, as the worker does), and which of them were set explicitly.

    Only these settings are read; values stay as they are (see :func:`plain_value` to show them).
    """
    from celery.app.defaults import DEFAULTS
    from celery.utils.collections import ConfigurationView

    values: dict[str, Any] = {}
    explicit: set[str] = set()
    with guarded("cannot read the app's settings"):
        _load_config(app)
        conf = app.conf
        maps = list(getattr(conf, "maps", []))
        without_defaults = ConfigurationView(
            {}, maps[:-1], getattr(conf, "_keys", None), getattr(conf, "prefix", None)
        )
        for key in keys:
            is_set = key in without_defaults
            if is_set:
                explicit.add(key)
            elif key not in DEFAULTS:
                continue  # unknown to this Celery version: leave it out, as its defaults do
            if isinstance(getattr(type(conf), key, None), property):
                values[key] = getattr(conf, key)  # broker_url, result_backend: the environment wins
            else:
                values[key] = conf.get(key)
    return values, frozenset(explicit)


def read_broker_settings(app: Any) -> tuple[str | None, dict[str, Any]]:
    """The app's ``broker_url`` and ``broker_transport_options``, read under the guard."""
    with guarded("cannot read the app's broker settings"):
        conf = app.conf
        url = conf.broker_url
        options = conf.broker_transport_options
        return (str(url) if url else None), (dict(options) if isinstance(options, Mapping) else {})


def bare_app(broker_url: str, transport_options: dict[str, Any]) -> Any:
    """A Celery app that only knows how to reach the broker (for commands run without ``-A``)."""
    from celery import Celery

    app = Celery("deploykit", broker=broker_url, set_as_current=False)
    app.conf.broker_transport_options = dict(transport_options)
    return app
