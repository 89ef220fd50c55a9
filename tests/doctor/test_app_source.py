"""The app's side of the audit: only the settings doctor checks are read, through the app's
namespace, after the app is set up as a worker does; nothing the user defined is evaluated for display."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from celery import Celery

import deploykit.doctor.checks as checks_module
from deploykit.doctor.checks import DRIFT_KEYS, check_drift
from deploykit.doctor.gather import AUDITED_SETTINGS, source_from_app, source_from_worker
from deploykit.doctor.model import Audit


class _Exploding:
    """A value that must never be evaluated (like a lazy translation before django.setup())."""

    def __repr__(self) -> str:
        raise AssertionError("an unaudited setting was evaluated")

    __str__ = __repr__


class _DjangoLikeSettings:
    """Every project setting lives in the same object, as with django.conf:settings."""

    LANGUAGES = [("en", _Exploding())]
    LOGIN_URL = _Exploding()
    CELERY_TASK_ACKS_LATE = True
    CELERY_TASK_REJECT_ON_WORKER_LOST = True
    CELERY_TASK_TIME_LIMIT = 600
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 7200, "fanout_patterns": True}
    CELERY_RESULT_BACKEND = _Exploding()  # an object a checked setting holds: shown by type

    @property
    def DATABASES(self) -> Any:
        raise AssertionError("an unaudited setting was read")


def _app() -> Celery:
    app = Celery("proj", set_as_current=False)
    app.config_from_object(_DjangoLikeSettings(), namespace="CELERY")
    return app


def test_only_the_audited_settings_are_read_through_the_namespace() -> None:
    source = source_from_app(_app())
    assert source.settings["task_acks_late"] is True
    assert source.settings["task_time_limit"] == 600
    assert source.settings["broker_transport_options"] == {
        "visibility_timeout": 7200,
        "fanout_patterns": True,
    }
    assert source.settings["result_backend"] == f"<{__name__}._Exploding object>"
    assert source.settings["worker_prefetch_multiplier"] == 4  # a default
    assert source.explicit == {
        "task_acks_late",
        "task_reject_on_worker_lost",
        "task_time_limit",
        "broker_transport_options",
        "result_backend",
    }
    assert "languages" not in source.settings and "databases" not in source.settings


def test_a_worker_reporting_namespaced_keys_is_no_drift() -> None:
    app = source_from_app(_app())
    # `inspect conf` replies with the keys as the worker's configuration holds them.
    worker = source_from_worker(
        "w1@host",
        {
            "CELERY_TASK_ACKS_LATE": True,
            "CELERY_TASK_REJECT_ON_WORKER_LOST": True,
            "CELERY_TASK_TIME_LIMIT": 600,
            "CELERY_BROKER_TRANSPORT_OPTIONS": {"visibility_timeout": 7200},
            "CELERY_RESULT_BACKEND": f"<{__name__}._Exploding object>",
            "LANGUAGES": [["en", "English"]],
        },
    )
    assert worker.settings["task_acks_late"] is True and worker.settings["task_time_limit"] == 600
    assert list(check_drift(Audit(broker_kind="redis", app=app, workers=(worker,)))) == []
    other = source_from_worker("w2@host", {"CELERY_TASK_TIME_LIMIT": 60})
    drift = list(check_drift(Audit(broker_kind="redis", app=app, workers=(other,))))
    assert "task_time_limit differs: app has 600; worker w2@host: 60" in [f.message for f in drift]


def test_every_setting_the_checks_read_is_audited() -> None:
    source = Path(checks_module.__file__).read_text()
    read = set(re.findall(r"source\.get\(\"(\w+)\"", source))
    for group in re.findall(r"for key in \(([^)]*)\)", source):  # for key in ("a", "b"): source.get(key)
        read |= set(re.findall(r"\"(\w+)\"", group))
    read |= {key.partition(".")[0] for key in DRIFT_KEYS}
    if "transport_options.get(" in source:
        read.add("broker_transport_options")
    assert read, "the pattern no longer finds the checks' settings"
    assert read <= set(AUDITED_SETTINGS), sorted(read - set(AUDITED_SETTINGS))
