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
    ),
    # Mayan EDMS 4.7 (2024-05-07) -> 4.12.2 (2026-09-16): 28 months. RabbitMQ.
    "mayan-edms": App(
        name="mayan-edms",
        old="4.7",
        new="4.12.2",
        celery_app="mayan.celery:app",
        broker="amqp",
        settings_module="mayan.settings.production",
    ),
}


def all_releases() -> list[Release]:
    return [release for app in APPS.values() for release in app.releases]


def deploykit_fingerprint() -> str:
    """Changes when deploykit's declared dependencies change: the venvs reinstall it then."""
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
