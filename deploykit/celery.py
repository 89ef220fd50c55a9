"""Release awareness inside the user's Celery app: one line where the app is created.

::

    from deploykit.celery import install
    app = Celery("proj")
    install(app)  # build id from DEPLOYKIT_BUILD, or install(app, build="2026.12.01-abc123")

After :func:`install`:

* every message this app publishes (web processes, beat, tasks calling tasks) carries the build id
  in the message header :data:`HEADER`, and nothing else in the message changes. A worker of a
  release without deploykit ignores it: Celery keeps unknown headers as custom request headers
  (``celery/app/task.py``, ``Context._get_custom_headers``) and runs the task as usual;
* every worker of this app advertises the build in its ``stats`` reply, under :data:`STATS_KEY`
  (``{"deploykit": {"build": "<id>"}}``), through a worker bootstep's ``info()``: Celery merges
  every bootstep's ``info()`` into ``stats`` (``celery/worker/worker.py``, ``WorkController.stats``),
  so ``deploykit workers`` reads it in the round trip it already makes.

Only this app is stamped: the ``before_task_publish`` signal does not say which app publishes, so
the stamp is added by this app's own task sender (``app.amqp.send_task_message``, the function
every publish of the app goes through: ``celery/app/base.py``, ``Celery.send_task``), wrapped
without reading the app's configuration (a Django project may configure the app after this call).
Headers given to the publish win over the stamp: a retry, which re-sends the request's headers
(``Context.as_execution_options``), keeps the build that produced its arguments.

When a worker of the app starts, it publishes the running code's manifest under the build id to
the manifest registry (:mod:`deploykit.registry`), in the background; a failure is a logged warning.

Importing this module loads only the standard library and deploykit's registry rules (Celery's
bootsteps on ``install``; never typer, rich or httpx): it runs in every web process, beat and
worker, and ``deploykit.fleet`` reads its constants.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any

from deploykit import registry
from deploykit.errors import DeploykitError, UsageError

if TYPE_CHECKING:
    from celery import Celery

#: The message header that carries the build id of the code that published the message.
HEADER = "deploykit_build"
#: The key of a worker's ``stats`` reply under which it advertises ``{"build": <id>}``.
STATS_KEY = "deploykit"
#: The environment variable read when ``install`` is given no build.
ENV_VAR = "DEPLOYKIT_BUILD"
#: The longest build id accepted.
MAX_BUILD_LENGTH = registry.MAX_BUILD_LENGTH


class BuildNotSetWarning(UserWarning):
    """``install`` found no build id: this process publishes unstamped messages."""


def validate_build(value: object) -> str:
    """``value`` as a build id, or a :class:`ValueError` saying in one line what is wrong with it.

    The rule is the registry's (:func:`deploykit.registry.validate_build`): 1 to 128 printable
    characters, no control characters, no whitespace other than the plain space (and not only
    spaces), no ``/`` or ``\\``, not ``.`` or ``..``. A build id names registry entries (Redis keys,
    RabbitMQ queues, files) and is printed in tables and logs.
    """
    try:
        return registry.validate_build(value)
    except UsageError as exc:  # user code calls install(): a plain ValueError, one line
        raise ValueError(exc.message) from None


#: The build of each installed app (weak: an app that goes away takes its entry with it).
_BUILDS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
#: ``install(register=…)`` of each installed app.
_REGISTER: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
#: The registry directory a worker publishes to, for brokers with no place to keep it.
REGISTRY_ENV_VAR = "DEPLOYKIT_REGISTRY"
logger = logging.getLogger(__name__)
_warned = False
_warn_lock = threading.Lock()


def install(app: Celery, build: str | None = None, *, register: bool = True) -> str | None:
    """Stamp every message ``app`` publishes with the build id, and make its workers advertise it.

    The build id is ``build``, else the ``DEPLOYKIT_BUILD`` environment variable; without either,
    nothing is stamped and a :class:`BuildNotSetWarning` says so (once per process). A build id
    that breaks the rule of :func:`validate_build` raises :class:`ValueError`. Calling it again
    on the same app replaces the build. Returns the build id in use (``None``: none).

    With ``register`` (the default), each worker of the app publishes the running code's manifest
    under the build id to the manifest registry when it starts (:func:`register_manifest`).
    """
    chosen = build if build is not None else os.environ.get(ENV_VAR) or None
    if chosen is None:
        _warn_unset()
        return None
    chosen = validate_build(chosen)
    _BUILDS[app] = chosen
    _REGISTER[app] = register
    amqp = app.amqp  # instantiating AMQP reads no setting (celery/app/amqp.py, AMQP.__init__)
    sender = amqp.__dict__.get("send_task_message")
    if not isinstance(sender, _StampingSender):
        amqp.send_task_message = _StampingSender(amqp, app)
    step = _build_step()
    if step not in app.steps["worker"]:
        app.steps["worker"].add(step)
    return chosen


def installed_build(app: Celery) -> str | None:
    """The build id ``install`` set on ``app`` (``None``: not installed, or no build)."""
    return _BUILDS.get(app)


def register_manifest(app: Celery, build: str) -> bool:
    """Publish the running ``app``'s manifest under ``build`` to the manifest registry: in the
    broker, or in the directory ``DEPLOYKIT_REGISTRY`` names. Never raises: a failure is logged
    as a warning (a registry must never stop a worker). True when it was published."""
    try:
        directory = os.environ.get(REGISTRY_ENV_VAR) or None
        result = registry.publish_running_manifest(app, build, registry_dir=directory)
    except Exception as exc:  # anything at all: the worker runs on regardless
        reason = exc.message if isinstance(exc, DeploykitError) else f"{type(exc).__name__}: {exc}"
        logger.warning("deploykit: the manifest of build %s was not registered: %s", build, reason)
        return False
    logger.info("deploykit: registered the manifest of build %s (%s tasks)", build, result.entry.tasks)
    return True


def _warn_unset() -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    warnings.warn(
        f"deploykit: no build id ({ENV_VAR} is not set and install() got no build): "
        "messages published by this process are not stamped and its workers advertise no build",
        BuildNotSetWarning,
        stacklevel=3,
    )


class _StampingSender:
    """``app.amqp.send_task_message`` with the build header added to the message's own headers.

    The stock sender is built on the first publish (it reads the app's settings), as Celery does.
    """

    def __init__(self, amqp: Any, app: Any) -> None:
        self._amqp = amqp
        self._app = weakref.ref(app)
        self._send: Any = None

    def _original(self) -> Any:
        attr = inspect.getattr_static(type(self._amqp), "send_task_message")
        if isinstance(attr, functools.cached_property):  # the stock AMQP (kombu's cached_property)
            return attr.func(self._amqp)
        return attr.__get__(self._amqp, type(self._amqp))  # a subclass's own method

    def __call__(self, producer: Any, name: Any, message: Any, *args: Any, **kwargs: Any) -> Any:
        send = self._send
        if send is None:
            send = self._send = self._original()
        app = self._app()
        build = _BUILDS.get(app) if app is not None else None
        headers = message[0]  # task_message(headers, properties, body, sent_event)
        if build is not None and isinstance(headers, dict):
            # Before the publish's own ``headers`` are merged in, so those win (see the module doc).
            headers[HEADER] = build
        return send(producer, name, message, *args, **kwargs)


@functools.cache
def _build_step() -> type:
    """The worker bootstep whose ``info()`` (merged into the ``stats`` reply) names the build."""
    from celery import bootsteps

    class BuildStep(bootsteps.StartStopStep):  # type: ignore[misc]  # celery ships no types
        label = "deploykit build"

        def info(self, obj: Any) -> dict[str, Any] | None:
            app = getattr(obj, "app", None)
            build = _BUILDS.get(app) if app is not None else None
            return {STATS_KEY: {"build": build}} if build is not None else None

        def start(self, parent: Any) -> None:
            app = getattr(parent, "app", None)
            build = _BUILDS.get(app) if app is not None else None
            if build is not None and _REGISTER.get(app, True):
                # In the background: a slow or unreachable registry must not delay the worker.
                threading.Thread(
                    target=register_manifest, args=(app, build), name="deploykit-registry", daemon=True
                ).start()

    return BuildStep
