"""Configuration resolution, the same for every command, in one place.

Order, first wins: command-line flag > ``DEPLOYKIT_*`` environment variable > ``[tool.deploykit]``
in the nearest ``pyproject.toml`` > the Celery app's own settings (``broker_url``,
``broker_transport_options``) > ``CELERY_BROKER_URL``. Transport options are merged key by key in
the same order, so a project can override one Redis option and keep the app's others.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.brokers.urls import default_management_url, mask_url, parse_broker_url
from deploykit.errors import UsageError

if TYPE_CHECKING:
    from deploykit.manifest.suppress import IgnoreEntry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "DEPLOYKIT_"
DEFAULT_TIMEOUT = 1.0
#: The manifest's file name in the project root, unless ``[tool.deploykit] manifest`` says otherwise.
DEFAULT_MANIFEST = "deploykit.manifest.json"

#: Longer is a typo, and would overflow what the clock, Redis TTLs and sleeps accept.
MAX_DURATION = 10 * 365.25 * 86400
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error message stays one readable line."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def parse_duration(text: str | float | int, *, what: str = "duration") -> float:
    """Parse ``90``, ``1.5``, ``30s``, ``5m``, ``1h30m``, ``250ms`` into seconds."""
    shown = _short_repr(text)
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        try:
            seconds = float(text)
        except OverflowError:
            seconds = math.inf
    else:
        value = str(text).strip().lower()
        try:
            seconds = float(value)
        except ValueError:
            parts = _DURATION_PART.findall(value)
            if not parts or "".join(n + u for n, u in parts) != value:
                raise UsageError(
                    f"invalid {what} {shown}: use seconds or a duration like 30s, 5m, 1h30m"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds < 0:
        raise UsageError(f"invalid {what} {shown}: must not be negative")
    if not seconds <= MAX_DURATION:  # also NaN
        raise UsageError(f"invalid {what} {shown}: must be a number of seconds up to 10 years")
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


#: The transport options deploykit, kombu or the client libraries read, by the type they must have
#: (kombu ``Channel.from_transport_options`` for Redis and the virtual transports, py-amqp
#: ``Connection`` for RabbitMQ). A wrong type is a usage error here, not a crash deep inside a
#: library. Options not listed pass through unchecked.
_NUMBER_OPTIONS = frozenset(
    {
        "visibility_timeout",
        "socket_timeout",
        "socket_connect_timeout",
        "connect_timeout",
        "read_timeout",
        "write_timeout",
        "polling_interval",
        "health_check_interval",
        "brpop_timeout",
        "interval_start",
        "interval_step",
        "interval_max",
    }
)
_INT_OPTIONS = frozenset({"max_retries", "min_other_sentinels", "max_connections", "unacked_restore_limit"})
_STR_OPTIONS = frozenset(
    {
        "master_name",
        "global_keyprefix",
        "sep",
        "unacked_key",
        "unacked_index_key",
        "unacked_mutex_key",
        "queue_name_prefix",
        "data_folder_in",
        "data_folder_out",
        "control_folder",
        "processed_folder",
    }
)
_MAPPING_OPTIONS = frozenset({"sentinel_kwargs", "client_properties"})
_BOOL_OPTIONS = frozenset({"confirm_publish", "fanout_patterns", "store_processed"})


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0


def check_transport_options(options: Mapping[str, Any]) -> None:
    """Refuse transport options of the wrong type (see ``_NUMBER_OPTIONS`` and its siblings)."""
    for key, value in options.items():
        if value is None:
            continue  # unset: the library's default
        if key in _NUMBER_OPTIONS and not _is_number(value):
            expected = "a number of seconds (0 or more)"
        elif key in _INT_OPTIONS and not (_is_number(value) and float(value).is_integer()):
            expected = "a whole number (0 or more)"
        elif key in _STR_OPTIONS and not isinstance(value, str):
            expected = "a string"
        elif key in _MAPPING_OPTIONS and not isinstance(value, Mapping):
            expected = "a table (a JSON object)"
        elif key in _BOOL_OPTIONS and not isinstance(value, bool):
            expected = "true or false"
        elif key == "priority_steps" and not (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
        ):
            expected = "a non-empty list of whole numbers from 0 to 255"
        else:
            continue
        raise UsageError(f"transport option {key} must be {expected}, not {_short_repr(value)}")


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
    check_transport_options(transport_options)
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


# --- the manifest commands' settings: flag > [tool.deploykit] > default ------------------------


def project_root(settings: Settings) -> Path:
    """The project root: the folder of the nearest pyproject.toml, else the current directory."""
    return settings.project_file.parent if settings.project_file is not None else Path.cwd()


def manifest_path(settings: Settings, given: Path | None = None) -> Path:
    """The committed manifest: ``given`` (``--manifest``, ``--output``), else ``[tool.deploykit]
    manifest``, else :data:`DEFAULT_MANIFEST`, both in the project root; shown relative to the
    current directory."""
    if given is not None:
        return given
    configured = _project_str(settings.project, "manifest", settings.project_file)
    path = project_root(settings) / (configured or DEFAULT_MANIFEST)
    try:
        return Path(os.path.relpath(path))
    except ValueError:  # another drive on Windows
        return path


def fail_on_level(settings: Settings, given: str | None = None) -> str:
    """``--fail-on``, else ``[tool.deploykit] fail_on``, else ``error``; validated, lower case."""
    from deploykit.findings import fail_threshold

    value = given if given is not None else settings.project.get("fail_on", "error")
    if not isinstance(value, str):
        raise UsageError(f"{settings.project_file}: [tool.deploykit] fail_on must be a string")
    fail_threshold(value)
    return value.strip().lower()


def ignore_entries(settings: Settings) -> tuple[IgnoreEntry, ...]:
    """``[tool.deploykit] ignore``, validated (an unknown rule ID is a usage error)."""
    from deploykit.manifest.suppress import parse_ignore

    where = f"{settings.project_file}: [tool.deploykit] ignore" if settings.project_file else "ignore"
    return parse_ignore(settings.project.get("ignore"), source=where)
