"""Configuration resolution: flag > env > pyproject > app > CELERY_BROKER_URL; masking."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploykit.brokers.urls import Redactor, default_management_url, mask_url
from deploykit.config import (
    DEFAULT_MANIFEST,
    CliFlags,
    Settings,
    fail_on_level,
    ignore_entries,
    manifest_path,
    parse_duration,
    project_root,
    resolve_settings,
)
from deploykit.errors import UsageError


def _project(tmp_path: Path, body: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(body)
    sub = tmp_path / "src" / "pkg"
    sub.mkdir(parents=True)
    return sub


def _app(broker: str | None = None, options: dict | None = None):
    conf = SimpleNamespace(broker_url=broker, broker_transport_options=options or {})
    return SimpleNamespace(conf=conf)


def test_resolution_order(tmp_path):
    cwd = _project(tmp_path, '[tool.deploykit]\nbroker = "redis://pyproject:6379/0"\ntimeout = "2s"\n')
    env = {"DEPLOYKIT_BROKER": "redis://env:6379/0", "CELERY_BROKER_URL": "redis://celery:6379/0"}
    flag, _ = resolve_settings(CliFlags(broker="redis://flag:6379/0"), environ=env, cwd=cwd)
    assert flag.broker_url == "redis://flag:6379/0" and flag.sources["broker"] == "flag"
    from_env, _ = resolve_settings(CliFlags(), environ=env, cwd=cwd)
    assert from_env.broker_url == "redis://env:6379/0"
    from_project, _ = resolve_settings(CliFlags(), environ={"CELERY_BROKER_URL": "x://"}, cwd=cwd)
    assert from_project.broker_url == "redis://pyproject:6379/0"
    assert from_project.timeout == 2.0
    assert from_project.project_file == tmp_path / "pyproject.toml"


def test_app_broker_then_celery_broker_url(tmp_path):
    loaded = []

    def load(spec):
        loaded.append(spec)
        return _app("amqp://app-user:secret@rabbit:5672/vh", {"visibility_timeout": 10})

    settings, app = resolve_settings(
        CliFlags(app="proj"), environ={"CELERY_BROKER_URL": "redis://c/0"}, cwd=tmp_path, load_app=load
    )
    assert loaded == ["proj"] and app is not None
    assert settings.broker_url == "amqp://app-user:secret@rabbit:5672/vh"
    assert settings.transport_options == {"visibility_timeout": 10}
    assert settings.management_url == "http://app-user:secret@rabbit:15672/"
    assert settings.masked_broker_url == "amqp://app-user:***@rabbit:5672/vh"
    fallback, _ = resolve_settings(CliFlags(), environ={"CELERY_BROKER_URL": "redis://c/0"}, cwd=tmp_path)
    assert fallback.broker_url == "redis://c/0" and fallback.sources["broker"] == "CELERY_BROKER_URL"


def test_app_not_imported_when_broker_given_unless_needed(tmp_path):
    def load(spec):
        raise AssertionError("must not import")

    settings, app = resolve_settings(
        CliFlags(app="proj", broker="redis://x/0"), environ={}, cwd=tmp_path, load_app=load
    )
    assert app is None and settings.app == "proj"


def test_transport_options_merge_key_by_key(tmp_path):
    cwd = _project(tmp_path, '[tool.deploykit.transport_options]\nsep = ":"\nvisibility_timeout = 60\n')
    env = {"DEPLOYKIT_TRANSPORT_OPTIONS": json.dumps({"visibility_timeout": 120})}
    settings, _ = resolve_settings(
        CliFlags(app="proj"),
        environ=env,
        cwd=cwd,
        load_app=lambda s: _app("redis://a/0", {"global_keyprefix": "p:", "sep": "|"}),
    )
    assert settings.transport_options == {"global_keyprefix": "p:", "sep": ":", "visibility_timeout": 120}


@pytest.mark.parametrize(
    ("body", "env", "message"),
    [
        ("[tool.deploykit\n", {}, "cannot read"),
        ("[tool.deploykit]\nbroker = 3\n", {}, "broker must be a string"),
        ("", {"DEPLOYKIT_TRANSPORT_OPTIONS": "{not json"}, "not valid JSON"),
        ("", {"DEPLOYKIT_TIMEOUT": "soon"}, "invalid timeout"),
        ("", {"DEPLOYKIT_TIMEOUT": "0"}, "greater than 0"),
    ],
)
def test_bad_configuration_is_a_usage_error(tmp_path, body, env, message):
    cwd = _project(tmp_path, body)
    with pytest.raises(UsageError, match=message):
        resolve_settings(CliFlags(), environ=env, cwd=cwd)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("1.5", 1.5), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "-3", "1h-2m", "m5"])
def test_parse_duration_rejects(text):
    with pytest.raises(UsageError):
        parse_duration(text)


def test_mask_url_handles_failover_lists_and_no_password():
    assert mask_url("amqp://u:p%40ss@h1//;amqp://u:other@h2//") == "amqp://u:***@h1//;amqp://u:***@h2//"
    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
    assert mask_url("amqp://user@h//") == "amqp://user@h//"


@given(
    st.text(
        alphabet=st.characters(
            blacklist_characters="@;/ \n\t\r", blacklist_categories=("Cs",), min_codepoint=33
        ),
        min_size=4,
    )
)
def test_redactor_never_lets_a_password_through(password):
    from urllib.parse import quote

    url = f"amqp://user:{quote(password, safe='')}@host:5672/vh"
    redactor = Redactor()
    redactor.add_url(url)
    text = f"failed to connect to {url} with {password}"
    assert password not in redactor(text)
    assert quote(password, safe="") not in redactor(text)


def test_default_management_url():
    assert (
        default_management_url("amqp://guest:guest@localhost:5672//") == "http://guest:guest@localhost:15672/"
    )
    assert default_management_url("amqps://u:p@h/vh") == "https://u:p@h:15672/"
    assert default_management_url("amqp://h") == "http://guest:guest@h:15672/"
    assert default_management_url("redis://h/0") is None


def test_manifest_settings_flag_then_pyproject_then_default_in_the_project_root(tmp_path, monkeypatch):
    """manifest, fail_on and ignore: the flag wins, then [tool.deploykit]; paths are in the
    project root (the pyproject's folder), shown relative to the current directory."""
    cwd = _project(
        tmp_path,
        '[tool.deploykit]\nmanifest = "ci/m.json"\nfail_on = " Warning "\nignore = ["TASK_REMOVED"]\n',
    )
    monkeypatch.chdir(cwd)
    settings, _ = resolve_settings(CliFlags(), environ={}, cwd=cwd)
    assert project_root(settings) == tmp_path
    assert manifest_path(settings) == Path("../../ci/m.json")
    assert manifest_path(settings, Path("given.json")) == Path("given.json")
    assert fail_on_level(settings) == "warning" and fail_on_level(settings, "NEVER") == "never"
    assert [(e.task, e.rule) for e in ignore_entries(settings)] == [("*", "TASK_REMOVED")]
    bare = tmp_path / "bare"
    bare.mkdir()
    monkeypatch.chdir(bare)
    plain = Settings(app=None, broker_url=None, management_url=None, timeout=1.0, transport_options={})
    assert project_root(plain) == bare
    assert manifest_path(plain) == Path(DEFAULT_MANIFEST)
    assert fail_on_level(plain) == "error" and ignore_entries(plain) == ()


@pytest.mark.parametrize(
    ("body", "lookup", "message"),
    [
        ("manifest = 3", manifest_path, r"pyproject.toml: \[tool.deploykit\] manifest must be a string"),
        ("fail_on = 1", fail_on_level, r"pyproject.toml: \[tool.deploykit\] fail_on must be a string"),
        ('fail_on = "sometimes"', fail_on_level, "invalid --fail-on 'sometimes'"),
        (
            'ignore = "TASK_REMOVED"',
            ignore_entries,
            r"pyproject.toml: \[tool.deploykit\] ignore must be a list",
        ),
        ('ignore = ["NO_SUCH_RULE"]', ignore_entries, "unknown rule 'NO_SUCH_RULE'"),
    ],
)
def test_bad_manifest_settings_are_usage_errors_naming_the_file(tmp_path, body, lookup, message):
    cwd = _project(tmp_path, f"[tool.deploykit]\n{body}\n")
    settings, _ = resolve_settings(CliFlags(), environ={}, cwd=cwd)
    with pytest.raises(UsageError, match=message):
        lookup(settings)
