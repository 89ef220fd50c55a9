"""Harness of the real-project corpus (`make test-real`).

Collected only when DEPLOYKIT_REAL=1 (the Makefile target sets it): the corpus installs six
virtual environments of real applications, which `make test` must not do.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.real import install as installer
from tests.real.corpus import APPS, HERE, App, Release

TRUTH = HERE / "collect_truth.py"
# Exit codes a command may end with on a real application (README, Exit codes): anything else,
# or a traceback, is a crash.
DOCUMENTED_EXITS = {0, 1, 2, 5, 69}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if os.environ.get("DEPLOYKIT_REAL") != "1" and collection_path.name.startswith("test_"):
        return True
    return None


@dataclass
class Deployment:
    """One release of an app, configured the way a deployment would be, on one broker."""

    app: App
    release: Release
    broker_url: str
    workdir: Path
    # Where results go: the broker's Redis database, or (RabbitMQ) a Redis database beside it,
    # as the projects' own compose files do (Mayan checks it is a key-value store at start-up).
    result_backend: str

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DEPLOYKIT_", "CELERY_", "DJANGO_", "PYTHON", "VIRTUAL_ENV"))
        }
        env["PATH"] = f"{self.release.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["DJANGO_SETTINGS_MODULE"] = self.app.settings_module
        env["GITHUB_ACTIONS"] = "false"
        env["NO_COLOR"] = "1"
        env["COLUMNS"] = "200"
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        backend = self.result_backend
        if self.app.name == "pretix":
            cfg = self.workdir / "pretix.cfg"
            cfg.write_text(
                f"[pretix]\ndatadir={data}\n[django]\nsecret=corpus-not-secret\n"
                f"[database]\nbackend=sqlite3\n[celery]\nbroker={self.broker_url}\n"
                f"backend={backend}\n"
            )
            env["PRETIX_CONFIG_FILE"] = str(cfg)
        elif self.app.name == "pretalx":
            cfg = self.workdir / "pretalx.cfg"
            cfg.write_text(
                f"[filesystem]\ndata={data}\n[database]\nbackend=sqlite3\n"
                f"[celery]\nbroker={self.broker_url}\nbackend={backend}\n"
            )
            env["PRETALX_CONFIG_FILE"] = str(cfg)
            env["PRETALX_DATA_DIR"] = str(data)
        elif self.app.name == "mayan-edms":
            env["MAYAN_MEDIA_ROOT"] = str(data)
            env["MAYAN_CELERY_BROKER_URL"] = self.broker_url
            env["MAYAN_CELERY_RESULT_BACKEND"] = backend
            env["MAYAN_SECRET_KEY"] = "corpus-not-secret"
        return env

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def deploykit(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.release.deploykit), *args, timeout=timeout)

    def truth(self, command: str, *extra: str) -> object:
        """The independent collector's answer (`tasks` is the same for a release whatever the
        namespace: computed once per session)."""
        if command == "tasks" and self.release.key in _TASKS_TRUTH:
            return _TASKS_TRUTH[self.release.key]
        out = self.workdir / f"truth-{command}-{self.release.key}.json"
        proc = self.run(str(self.release.python), str(TRUTH), str(out), command, self.app.celery_app, *extra)
        assert proc.returncode == 0, (
            f"the independent collector failed on {self.release.key} ({command}):\n{proc.stderr[-4000:]}"
        )
        result = json.loads(out.read_text())
        if command == "tasks":
            _TASKS_TRUTH[self.release.key] = result
        return result


_TASKS_TRUTH: dict[str, object] = {}


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """What a failing assertion shows: the command, its exit code, the ends of its output."""
    return (
        f"$ {' '.join(proc.args)}\nexit {proc.returncode}\n"
        f"--- stdout (end)\n{proc.stdout[-3000:]}\n--- stderr (end)\n{proc.stderr[-3000:]}"
    )


def selected_apps() -> list[str]:
    """DEPLOYKIT_REAL_APPS=pretix,pretalx narrows the corpus (default: every app)."""
    wanted = [a for a in os.environ.get("DEPLOYKIT_REAL_APPS", "").split(",") if a]
    unknown = set(wanted) - set(APPS)
    if unknown:
        raise pytest.UsageError(f"DEPLOYKIT_REAL_APPS: unknown {sorted(unknown)}; known {sorted(APPS)}")
    return wanted or sorted(APPS)


@pytest.fixture(scope="session")
def installed() -> None:
    failures = []
    for app in (APPS[name] for name in selected_apps()):
        for release in app.releases:
            try:
                installer.install(release)
            except SystemExit as exc:
                failures.append(str(exc))
    if failures:
        pytest.fail("installing the corpus failed: " + "; ".join(failures))


@pytest.fixture(params=selected_apps())
def app(request: pytest.FixtureRequest, installed: None) -> App:
    return APPS[request.param]


@pytest.fixture
def broker_url(app: App, request: pytest.FixtureRequest) -> Iterator[str]:
    """A private namespace on the broker the app's project documents: a fresh Redis database on
    the suite's redis-server, or a fresh RabbitMQ vhost."""
    name = "rabbitmq_url" if app.broker == "amqp" else "redis_url"
    yield request.getfixturevalue(name)


@pytest.fixture
def deployments(
    app: App, broker_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Deployment, Deployment]:
    old, new = app.releases
    backend = broker_url if app.broker == "redis" else request.getfixturevalue("redis_url")
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    return (
        Deployment(app, old, broker_url, tmp_path / "old", backend),
        Deployment(app, new, broker_url, tmp_path / "new", backend),
    )
