"""``deploykit.celery``: the build id rule, stamping only the installed app, the worker's ``stats``
entry, and where deploykit reads the build back (worker replies, message headers)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from celery import Celery
from celery.signals import before_task_publish

from deploykit.brokers.envelope import parse_ready, raw_from_envelope
from deploykit.celery import HEADER, MAX_BUILD_LENGTH, STATS_KEY, install, installed_build, validate_build
from deploykit.fleet.base import Replies
from deploykit.fleet.replies import parse_worker, worker_build
from deploykit.messages import StoredHeaders, loads_json, task_headers
from tests.scan.test_fast_paths import envelope


@pytest.mark.parametrize(
    "build",
    ["A", "2026.12.01-abc123", "v1.2.3+build.7", "release 42", "ü-ß", "x" * MAX_BUILD_LENGTH, "main@4f2a9c1"],
)
def test_valid_build_ids(build: str) -> None:
    assert validate_build(build) == build


@pytest.mark.parametrize(
    ("build", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * (MAX_BUILD_LENGTH + 1), "129 characters, at most 128"),
        ("a\nb", "control"),
        ("a\x00b", "control"),
        ("a\tb", "control"),
        ("a\x1b[31mred", "control"),
        ("a\u200bb", "non-printable"),  # zero-width space
        ("a/b", "'/'"),
        ("a\\b", "'/'"),
        ("..", "'.'"),
        (42, "expected a string, got int"),
        (None, "expected a string, got NoneType"),
    ],
)
def test_invalid_build_ids_raise_one_line(build: Any, says: str) -> None:
    with pytest.raises(ValueError, match="invalid build id") as caught:
        validate_build(build)
    message = str(caught.value)
    assert says in message and "\n" not in message and "\x1b" not in message


def test_install_refuses_a_bad_build_before_touching_the_app() -> None:
    app = Celery("bad", broker="memory://", set_as_current=False)
    with pytest.raises(ValueError, match="at most 128"):
        install(app, build="x" * 200)
    assert installed_build(app) is None and "amqp" not in app.__dict__


@pytest.fixture
def published() -> Any:
    seen: list[dict[str, Any]] = []

    def record(headers: dict[str, Any] | None = None, **_: Any) -> None:
        seen.append(dict(headers or {}))

    before_task_publish.connect(record, weak=False)
    yield seen
    before_task_publish.disconnect(record)


def test_only_the_installed_app_is_stamped(published: list[dict[str, Any]]) -> None:
    stamped = Celery("stamped", broker="memory://", set_as_current=False)
    other = Celery("other", broker="memory://", set_as_current=False)
    assert install(stamped, build="A") == "A"

    @stamped.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    add.apply_async((1, 2))
    stamped.send_task("t.any", (1,))
    other.send_task("t.any", (1,))
    assert [h.get(HEADER) for h in published] == ["A", "A", None]
    # Headers given to the publish win (a retry re-sends its request's headers): the original stamp stays.
    add.apply_async((1, 2), headers={HEADER: "OLD"})
    assert published[-1][HEADER] == "OLD"
    # Installing again replaces the build, without wrapping twice.
    install(stamped, build="B")
    stamped.send_task("t.any", (1,))
    assert published[-1][HEADER] == "B" and installed_build(stamped) == "B"
    assert len([s for s in stamped.steps["worker"] if s.__name__ == "BuildStep"]) == 1


def test_the_configuration_is_not_read_at_install() -> None:
    """Django projects configure the app after creating it: install must not load the settings."""
    app = Celery("late", set_as_current=False)
    install(app, build="A")
    assert not app.configured
    app.config_from_object({"broker_url": "memory://", "task_default_queue": "late-queue"})
    assert app.conf.task_default_queue == "late-queue"


def test_the_worker_step_adds_the_build_to_stats() -> None:
    app = Celery("w", broker="memory://", set_as_current=False)
    install(app, build="A")
    (step_cls,) = [s for s in app.steps["worker"] if s.__name__ == "BuildStep"]

    class Worker:
        pass

    worker = Worker()
    worker.app = app  # type: ignore[attr-defined]
    assert step_cls(worker).info(worker) == {STATS_KEY: {"build": "A"}}
    worker.app = Celery("not-installed", set_as_current=False)  # type: ignore[attr-defined]
    assert step_cls(worker).info(worker) is None


@pytest.mark.parametrize(
    ("stats", "build"),
    [
        ({"pid": 1, STATS_KEY: {"build": "A"}}, "A"),
        ({"pid": 1}, None),
        ({STATS_KEY: "A"}, None),
        ({STATS_KEY: {"build": 7}}, None),
        ({STATS_KEY: {"build": "a\x1b[2Jb"}}, None),  # never printed as sent
        ("not a mapping", None),
        (None, None),
    ],
)
def test_worker_build_from_stats(stats: Any, build: str | None) -> None:
    assert worker_build(stats) == build
    replies = Replies({"stats": {"w@h": stats}}, missing=())
    assert parse_worker("w@h", replies).build == build


@pytest.mark.parametrize(
    ("value", "build"), [("A", "A"), (None, None), (3, None), ("", None), ("a\nb", None)]
)
def test_the_build_header_of_a_message(value: Any, build: str | None) -> None:
    assert task_headers(StoredHeaders.from_mapping({"id": "x", HEADER: value})).build == build


def test_the_scan_fast_path_reads_the_build_header() -> None:
    data = envelope([["u1"], {}, {}], headers={"task": "notify", "id": "id-1", "retries": 0, HEADER: "A"})
    (fast,) = parse_ready("celery", [data])
    general = raw_from_envelope("ready", "celery", data, loads_json(data))
    assert fast.headers == general.headers and fast.headers.deploykit_build == "A"


def test_importing_deploykit_celery_loads_no_cli_libraries() -> None:
    script = (
        "import json, sys; import deploykit.celery; "
        "print(json.dumps(sorted(m for m in ('typer', 'rich', 'httpx', 'celery') if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []
