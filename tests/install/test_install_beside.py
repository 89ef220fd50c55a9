"""deploykit installs beside an app without touching the app's pins (README, "Installing beside
your app").

Each case is an environment an application could have: its pins go in first, then deploykit is
installed from this checkout, exactly as a user would (``pip install <wheel>``, the resolver on).
Asserted: pip resolves; nothing installed before is upgraded, downgraded or removed; no broker
client is added (a RabbitMQ-only environment gets no ``redis``); and in the resulting environment
``deploykit --help``, ``manifest snapshot`` of a small app and a real broker command work.

Environments are cached under ``.cache/install/<case>-<hash of its pins>/`` (gitignored) and pip's
own wheel cache is used, so a warm run only reinstalls deploykit when its sources or declared
dependencies change (``.deploykit-<fingerprint>`` marks the last real install, whose before/after
listings are kept beside it). Before reinstalling, what the last install added is uninstalled and
the environment is checked to be back to exactly the app's pins.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli import ROOT

CACHE = ROOT / ".cache" / "install"
HERE = Path(__file__).resolve().parent

#: Distributions that are a broker's client library: never added by installing deploykit.
BROKER_CLIENTS = frozenset(
    {"redis", "hiredis", "boto3", "botocore", "pycurl", "librabbitmq", "pymongo", "kazoo",
     "confluent-kafka", "python-consul2", "azure-servicebus", "azure-storage-queue",
     "google-cloud-pubsub", "sqlalchemy", "pyro4", "qpid-python", "softlayer-messaging", "pgmq"}
)  # fmt: skip
#: Installer tooling, not part of what an app pins.
TOOLING = frozenset({"pip", "setuptools", "wheel", "deploykit"})


@dataclass(frozen=True)
class Case:
    name: str
    pins: tuple[str, ...]
    #: The broker the app's own environment is set up for.
    broker: str = "redis"
    python: str = "3.11"

    @property
    def venv(self) -> Path:
        key = hashlib.sha256(json.dumps([self.python, self.pins]).encode()).hexdigest()[:10]
        return CACHE / f"{self.name}-{key}"


CASES = [
    # redis-py newer than kombu[redis] allows (kombu's extra caps it): the ResolutionImpossible.
    Case("redis-7.4", ("celery==5.6.3", "redis==7.4.*", "packaging")),
    # An older app: Celery below deploykit's former floor, and old redis/packaging/dateutil pins.
    # (kombu pinned too, as the app's lock file does: kombu 5.6+ refuses redis-py below 6.1.)
    Case(
        "celery-5.3.1",
        ("celery==5.3.1", "kombu==5.3.1", "python-dateutil==2.8.2", "redis<5.1", "packaging<24.1"),
    ),
    # Whatever is newest today, set up for Redis as Celery documents it (kombu 5.4+'s Redis
    # transport also needs `packaging`: without it deploykit says `pip install packaging`).
    Case("newest", ("celery[redis]", "hiredis")),
    # RabbitMQ only: no Redis client anywhere, before or after.
    Case("rabbitmq-only", ("celery==5.4.0",), broker="amqp"),
    # deploykit's declared floors, all at once, on the oldest Python it supports.
    Case(
        "floors",
        (
            "celery==5.3.0",
            "kombu==5.3.0",
            "amqp==5.1.1",
            "billiard==4.1.0",
            "vine==5.0.0",
            "python-dateutil==2.8.2",
            "click==8.1.7",
            "typer==0.12.4",
            "rich==10.11.0",
            "httpx==0.23.1",
            "msgspec==0.13.1",
            "tomli==1.1.0",
            "redis==4.5.4",
            "packaging<24.1",
        ),
        python="3.10",
    ),
]


def find_python(version: str) -> str | None:
    """An interpreter of ``version``: on PATH, else a pyenv install."""
    if sys.version_info[:2] == tuple(int(p) for p in version.split(".")):
        return sys.executable
    candidates = [shutil.which(f"python{version}") or ""]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "--version"], capture_output=True).returncode == 0:
            return candidate
    return None


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEPLOYKIT_", "PYTHON", "VIRTUAL_ENV", "PIP_", "CELERY_", "DJANGO_"))
    }
    env.update({"NO_COLOR": "1", "COLUMNS": "200", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    env.update(extra)
    return env


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env=clean_env(), **kwargs)  # type: ignore[call-overload,no-any-return]


def installed(venv: Path) -> dict[str, str]:
    """``{normalized name: version}`` of everything in ``venv`` but installer tooling."""
    proc = run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"])
    assert proc.returncode == 0, proc.stderr
    listing = {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(proc.stdout)}
    return {name: version for name, version in listing.items() if name not in TOOLING}


def fingerprint() -> str:
    """Changes when deploykit's declared dependencies or its code change."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    for path in sorted((ROOT / "deploykit").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def deploykit_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploykit built from this checkout, once per session."""
    out = tmp_path_factory.mktemp("wheel")
    proc = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)])
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("deploykit-*.whl")
    return wheel


@dataclass
class Installed:
    before: dict[str, str]
    after: dict[str, str]
    pip_output: str


def prepare(case: Case, wheel: Path) -> Installed:
    """The case's environment with its pins, then deploykit installed into it (cached)."""
    venv = case.venv
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip"]
    if not (venv / ".pins-installed").exists():
        base = find_python(case.python)
        if base is None:
            pytest.skip(f"no Python {case.python} on this machine")
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        proc = run([base, "-m", "venv", str(venv)])
        assert proc.returncode == 0, proc.stderr
        proc = run([*pip, "install", "-q", *case.pins], timeout=900)
        assert proc.returncode == 0, f"the app's own pins do not install: {proc.stderr[-3000:]}"
        (venv / "pins.json").write_text(json.dumps(installed(venv), indent=1, sort_keys=True))
        (venv / ".pins-installed").write_text("\n".join(case.pins) + "\n")
    pins = json.loads((venv / "pins.json").read_text())
    marker = venv / f".deploykit-{fingerprint()}"
    record = venv / "deploykit-install.json"
    if marker.exists() and record.exists():
        data = json.loads(record.read_text())
        return Installed(data["before"], data["after"], data["pip_output"])
    for old in venv.glob(".deploykit-*"):
        old.unlink()
    if record.exists():  # undo the previous install: back to the app's pins alone
        added = sorted(set(json.loads(record.read_text())["after"]) - set(pins))
        run([*pip, "uninstall", "-q", "-y", "deploykit", *added], timeout=300)
        record.unlink()
    else:
        run([*pip, "uninstall", "-q", "-y", "deploykit"], timeout=300)
    before = installed(venv)
    assert before == pins, "the cached environment drifted from its pins: delete it and rerun"
    proc = run([*pip, "install", str(wheel)], timeout=900)
    result = Installed(before, installed(venv), proc.stdout + proc.stderr)
    if proc.returncode == 0:
        record.write_text(json.dumps(result.__dict__, indent=1, sort_keys=True))
        marker.write_text(fingerprint())
    else:
        result.after = {}
    return result


@pytest.fixture(params=CASES, ids=[case.name for case in CASES])
def beside(request: pytest.FixtureRequest, deploykit_wheel: Path) -> Iterator[tuple[Case, Installed]]:
    yield request.param, prepare(request.param, deploykit_wheel)


def deploykit(case: Case, *args: str, cwd: Path = HERE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(case.venv / "bin" / "deploykit"), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=clean_env(PYTHONPATH=str(HERE)),
        timeout=120,
    )


def changed(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, str]:
    return {
        name: f"{version} -> {after.get(name, 'removed')}"
        for name, version in before.items()
        if after.get(name) != version
    }


# A cold run builds the environment (pip downloads and builds); a warm one takes seconds.
@pytest.mark.timeout(1800)
def test_install_changes_nothing_the_app_pinned(
    beside: tuple[Case, Installed], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    case, result = beside
    assert result.after, f"pip could not install deploykit beside {case.pins}:\n{result.pip_output[-4000:]}"
    assert "deploykit" not in result.before
    assert changed(result.before, result.after) == {}
    added = set(result.after) - set(result.before)
    assert not added & BROKER_CLIENTS, f"broker clients added: {sorted(added & BROKER_CLIENTS)}"
    if case.broker == "amqp":
        assert "redis" not in result.after and "hiredis" not in result.after

    help_ = deploykit(case, "--help")
    assert help_.returncode == 0, help_.stderr
    assert "manifest" in help_.stdout and "Traceback" not in help_.stderr

    manifest = tmp_path / "manifest.json"
    snap = deploykit(case, "manifest", "snapshot", "-A", "beside_app.tasks", "-o", str(manifest))
    assert snap.returncode == 0, snap.stdout + snap.stderr
    tasks = json.loads(manifest.read_text())["tasks"]
    names = {task["name"] for task in tasks} if isinstance(tasks, list) else set(tasks)
    assert {"beside.add", "beside.notify"} <= names

    # A real broker command through the environment's own client libraries.
    if case.broker == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = request.getfixturevalue("rabbitmq_url")
    queues = deploykit(case, "queues", "-b", url, "--json", "--timeout", "2")
    assert queues.returncode == 0, queues.stderr
    assert json.loads(queues.stdout)["schema"]

    if "redis" not in result.after:
        missing = deploykit(case, "queues", "-b", "redis://127.0.0.1:1/0", "--timeout", "0.5")
        assert missing.returncode == 2
        assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
        assert "pip install redis" in missing.stderr and "Traceback" not in missing.stderr
