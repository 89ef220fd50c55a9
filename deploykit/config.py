"""Configuration resolution, the same for every command, in one place.

Order, first wins: command-line flag > ``DEPLOYKIT_*`` environment variable > ``[tool.deploykit]``
in the nearest ``pyproject.toml`` > the Celery app's own settings (``broker_url``,
``broker_transport_options``) > ``CELERY_BROKER_URL``. Transport options are merged key by key in
the same order, so a project can override one Redis option and keep the app's others.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# URL knowledge lives in deploykit.brokers.urls; Redactor and mask_url are re-exported for callers.
from deploykit.brokers.urls import Redactor as Redactor
from deploykit.brokers.urls import default_management_url, parse_broker_url
from deploykit.brokers.urls import mask_url as mask_url
from deploykit.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "DEPLOYKIT_"
DEFAULT_TIMEOUT = 1.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int, *, what: str = "duration") -> float:
    """Parse ``90``, ``1.5``, ``30s``, ``5m``, ``1h30m``, ``250ms`` into seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower()
        try:
            seconds = float(value)
        except ValueError:
            parts = _DURATION_PART.findall(value)
            if not parts or "".join(n + u for n, u in parts) != value:
                raise UsageError(
                    f"invalid {what} {text!r}: use seconds or a duration like 30s, 5m, 1h30m"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds < 0:
        raise UsageError(f"invalid {what} {text!r}: must not be negative")
    return seconds


@dataclass(frozen=True)
class CliFlags:
    """Values given on the command line; ``None`` means not given."""

    app: str | None = None
    broker: str | None = None
    management_url: str | None = None
    timeout: str | None = None


@dataclass(frozen=True)
class Settings:
    """The resolved configuration every command runs with."""

    app: str | None
    broker_url: str | None
    management_url: str | None
    timeout: float
    transport_options: Mapping[str, Any]
    project: Mapping[str, Any] = field(default_factory=dict)
    project_file: Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def masked_broker_url(self) -> str | None:
        return mask_url(self.broker_url)

    def redactor(self) -> Redactor:
        redactor = Redactor()
        redactor.add_url(self.broker_url)
        redactor.add_url(self.management_url)
        return redactor


def find_pyproject(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` in ``start`` or one of its parents."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def read_project_table(path: Path | None) -> dict[str, Any]:
    """``[tool.deploykit]`` of ``path`` (empty when absent); a corrupt file is a usage error."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    table = data.get("tool", {}).get("deploykit", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.deploykit] must be a table")
    return table


def _env_transport_options(environ: Mapping[str, str]) -> dict[str, Any]:
    raw = environ.get(ENV_PREFIX + "TRANSPORT_OPTIONS")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{ENV_PREFIX}TRANSPORT_OPTIONS is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{ENV_PREFIX}TRANSPORT_OPTIONS must be a JSON object")
    return value


def _project_str(table: Mapping[str, Any], key: str, path: Path | None) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{path}: [tool.deploykit] {key} must be a string")
    return value


AppLoader = Callable[[str], Any]


def resolve_settings(
    flags: CliFlags,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    load_app: AppLoader | None = None,
    need_app: bool = False,
) -> tuple[Settings, Any]:
    """Resolve the settings; return them with the imported Celery app (or ``None``).

    The app is imported only when one is named and either ``need_app`` is set or the broker URL
    is not given by a higher-priority source (importing runs user code, so avoid it when we can).
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    project_file = find_pyproject(cwd)
    table = read_project_table(project_file)
    sources: dict[str, str] = {}

    def pick(key: str, flag: str | None, project_key: str) -> str | None:
        if flag is not None:
            sources[key] = "flag"
            return flag
        env_value = environ.get(ENV_PREFIX + key.upper())
        if env_value:
            sources[key] = "env"
            return env_value
        value = _project_str(table, project_key, project_file)
        if value is not None:
            sources[key] = "pyproject"
        return value

    app_spec = pick("app", flags.app, "app")
    broker = pick("broker", flags.broker, "broker")
    management = pick("management_url", flags.management_url, "management_url")
    timeout_raw: str | float | None = flags.timeout
    if timeout_raw is None:
        timeout_raw = environ.get(ENV_PREFIX + "TIMEOUT") or table.get("timeout")
    timeout = DEFAULT_TIMEOUT if timeout_raw in (None, "") else parse_duration(timeout_raw, what="timeout")
    if timeout <= 0:
        raise UsageError("timeout must be greater than 0")

    project_options = table.get("transport_options", {})
    if not isinstance(project_options, dict):
        raise UsageError(f"{project_file}: [tool.deploykit] transport_options must be a table")
    env_options = _env_transport_options(environ)

    app = None
    app_options: dict[str, Any] = {}
    if app_spec and (need_app or broker is None) and load_app is not None:
        from deploykit.userapp import read_broker_settings

        app = load_app(app_spec)
        app_broker, app_options = read_broker_settings(app)  # user settings: read under the guard
        if broker is None and app_broker:
            broker = app_broker
            sources["broker"] = "app"
    if broker is None and environ.get("CELERY_BROKER_URL"):
        broker = environ["CELERY_BROKER_URL"]
        sources["broker"] = "CELERY_BROKER_URL"

    transport_options = {**app_options, **project_options, **env_options}
    if broker:
        parse_broker_url(broker)  # a malformed URL is a usage error here, before any connection
    if management is None:
        management = default_management_url(broker)
        if management:
            sources["management_url"] = "derived"
    settings = Settings(
        app=app_spec,
        broker_url=broker,
        management_url=management,
        timeout=timeout,
        transport_options=transport_options,
        project=table,
        project_file=project_file,
        sources=sources,
    )
    return settings, app
