"""Celery's built-in tasks: registered by every worker of every app, so never "no longer registered".

Celery registers them on every app when it is finalized (``celery/app/builtins.py``, each through
``connect_on_app_finalize``): ``celery.backend_cleanup``, ``celery.chord_unlock``, ``celery.group``,
``celery.chain``, ``celery.chord``, ``celery.map``, ``celery.starmap``, ``celery.chunks``,
``celery.accumulate``. Manifests leave them out (they are not the app's code), but messages and beat
entries name them — django-celery-beat creates a ``celery.backend_cleanup`` row by default — so the
scan and the beat rules judge them against the signatures of the Celery installed here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping

from deploykit.manifest.model import Task

#: Where Celery defines its built-in tasks.
BUILTINS_MODULE = "celery.app.builtins"


@functools.cache
def builtin_tasks() -> Mapping[str, Task]:
    """Celery's built-in tasks by name, with their signatures, read from a throwaway app."""
    from celery import Celery

    from deploykit.manifest.collect import parameters_of

    app = Celery("deploykit-builtins", set_as_current=False)
    tasks = {}
    for name, task in app.tasks.items():  # finalizing runs Celery's own finalizers
        if not name.startswith("celery.") or type(task).__module__ != BUILTINS_MODULE:
            continue
        run = task.run
        function = inspect.unwrap(getattr(run, "__func__", run))
        tasks[name] = Task(
            name=name,
            parameters=parameters_of(run),
            module=BUILTINS_MODULE,
            qualname=getattr(function, "__qualname__", None),
            bound=inspect.ismethod(run),
        )
    return dict(sorted(tasks.items()))


def is_builtin(name: str) -> bool:
    """True for a task name Celery itself registers on every worker."""
    return name in builtin_tasks()


def is_builtin_task(name: str, task: object) -> bool:
    """True for ``task``, registered as ``name`` in an app, when it is Celery's own built-in (not
    the app's code): the name is a built-in's and Celery defined it. A task of the app's that is
    merely named ``celery.…`` (or replaces a built-in) is the app's code, and in its manifest."""
    return is_builtin(name) and type(task).__module__ == BUILTINS_MODULE
