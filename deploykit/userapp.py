"""Importing the user's Celery app: the only place deploykit runs user code.

``-A/--app`` works like ``celery -A``: ``module:attribute``, or ``module`` in which an attribute
named ``app`` or ``celery`` (or the ``module.celery`` submodule's) is a Celery app. The current
directory is put on ``sys.path`` first, as Celery does. Any failure is a usage error (exit 2)
carrying the import error's own message.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

from deploykit.errors import UsageError


def _is_celery_app(obj: Any) -> bool:
    from celery import Celery

    return isinstance(obj, Celery)


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" ({os.path.relpath(last.filename)}:{last.lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


def load_app(spec: str) -> Any:
    """Import and return the Celery app named by ``spec``."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or any(part == "" for part in module_name.split(".")):
        raise UsageError(f"invalid app {spec!r}: expected MODULE or MODULE:ATTRIBUTE")
    cwd = os.getcwd()  # noqa: PTH109 - sys.path holds strings, as `celery -A` puts it there
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # user code can raise anything, SystemExit included
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageError(f"cannot import app module {module_name!r}: {_describe(exc)}") from None

    if attribute:
        obj: Any = module
        for part in attribute.split("."):
            if not hasattr(obj, part):
                raise UsageError(f"module {module_name!r} has no attribute {attribute!r}")
            obj = getattr(obj, part)
        if callable(obj) and not _is_celery_app(obj):
            try:
                obj = obj()
            except Exception as exc:
                raise UsageError(f"calling {spec!r} failed: {_describe(exc)}") from None
        if not _is_celery_app(obj):
            raise UsageError(f"{spec!r} is not a Celery app (got {type(obj).__name__})")
        return obj

    for name in ("app", "celery"):
        candidate = getattr(module, name, None)
        if candidate is not None and _is_celery_app(candidate):
            return candidate
    try:
        sub = importlib.import_module(module_name + ".celery")
    except ModuleNotFoundError:
        sub = None
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageError(f"cannot import app module {module_name + '.celery'!r}: {_describe(exc)}") from None
    if sub is not None:
        for name in ("app", "celery"):
            candidate = getattr(sub, name, None)
            if candidate is not None and _is_celery_app(candidate):
                return candidate
    found = [value for value in vars(module).values() if _is_celery_app(value)]
    if len(found) == 1:
        return found[0]
    raise UsageError(f"no Celery app found in module {module_name!r}: name it as {module_name}:ATTRIBUTE")


def bare_app(broker_url: str, transport_options: dict[str, Any]) -> Any:
    """A Celery app that only knows how to reach the broker (for commands run without ``-A``)."""
    from celery import Celery

    app = Celery("deploykit", broker=broker_url, set_as_current=False)
    app.conf.broker_transport_options = dict(transport_options)
    return app
