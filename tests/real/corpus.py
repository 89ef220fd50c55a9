"""The real applications of the corpus: which releases, how to load them, which broker.

Each application is a Django + Celery project published on PyPI, installed at two releases
18-28 months apart (wheel build dates in the comments). Nothing in them is patched: the harness
only writes the configuration a deployment would (a settings/config file or environment
variables, SQLite or the machine's PostgreSQL).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "real"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Release:
    app: str
    version: str

    @property
    def key(self) -> str:
        return f"{self.app}-{self.version}"

    @property
    def venv(self) -> Path:
        return CACHE / self.key

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def deploykit(self) -> Path:
        return self.venv / "bin" / "deploykit"


@dataclass(frozen=True)
class App:
    name: str  # PyPI distribution name
    old: str
    new: str
    celery_app: str  # what a team passes to `celery -A`
    broker: str  # "redis" or "amqp": the one the project documents for production
    settings_module: str
    extra_env: dict[str, str] = field(default_factory=dict)
    #: What the project's production install adds beside it, as its docs say: an extra of its
    #: own (``pretalx[redis]``) or the broker client for its result backend (``celery[redis]``).
    #: deploykit brings no broker client, so these must come from the app's side, as they do.
    extras: str = ""
    with_packages: tuple[str, ...] = ()
    #: Per release, what it ran with in its day where today's resolution breaks the app itself.
    release_packages: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def requirements(self, version: str) -> list[str]:
        """The pip requirements that install this release as a deployment does."""
        extras = f"[{self.extras}]" if self.extras else ""
        era = self.release_packages.get(version, ())
        return [f"{self.name}{extras}=={version}", *self.with_packages, *era]

    @property
    def releases(self) -> tuple[Release, Release]:
        return Release(self.name, self.old), Release(self.name, self.new)


APPS: dict[str, App] = {
    # pretix 2024.10.0 (2024-10-29) -> 2026.8.0 (2026-09-30): 23 months. Redis.
    "pretix": App(
        name="pretix",
        old="2024.10.0",
        new="2026.8.0",
        celery_app="pretix.celery_app:app",
        broker="redis",
        settings_module="pretix.settings",
    ),
    # pretalx 2024.1.0 (2024-02-16) -> 2025.2.2 (2025-12-05): 22 months. Redis.
    "pretalx": App(
        name="pretalx",
        old="2024.1.0",
        new="2025.2.2",
        celery_app="pretalx.celery_app:app",
        broker="redis",
        settings_module="pretalx.settings",
        extras="redis",  # its install docs: pip install "pretalx[redis]"
        # 2024.1 pins redis-py 5.0 but leaves kombu open: today's kombu (5.6+) refuses that
        # redis-py, so its own workers would not start. Deployed in its day, it had kombu 5.3.
        release_packages={"2024.1.0": ("kombu<5.4",)},
    ),
    # Mayan EDMS 4.7 (2024-05-07) -> 4.12.2 (2026-09-16): 28 months. RabbitMQ.
    "mayan-edms": App(
        name="mayan-edms",
        old="4.7",
        new="4.12.2",
        celery_app="mayan.celery:app",
        broker="amqp",
        settings_module="mayan.settings.production",
        # Results in Redis, as its compose file does: Celery's own bundle for that backend,
        # resolved against the kombu/celery the release pins.
        with_packages=("celery[redis]",),
    ),
}


def all_releases() -> list[Release]:
    return [release for app in APPS.values() for release in app.releases]


def deploykit_fingerprint() -> str:
    """Changes when deploykit's declared dependencies change: the venvs reinstall it then."""
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
