"""Importing the user's app: like `celery -A`, failures are usage errors with the real message."""

from __future__ import annotations

import sys
import textwrap

import pytest

from deploykit.errors import UsageError
from deploykit.userapp import load_app


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    created = []

    def write(name: str, source: str) -> None:
        path = tmp_path / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(tmp_path).parents:
            if str(parent) != ".":
                (tmp_path / parent / "__init__.py").touch()
        path.write_text(textwrap.dedent(source))
        created.append(name.split(".")[0])

    yield write
    for name in list(sys.modules):
        if name.split(".")[0] in created:
            del sys.modules[name]


APP = "from celery import Celery\n{name} = Celery('p', broker='memory://', set_as_current=False)\n"


def test_module_attribute_forms(project):
    project("dkproj_a", APP.format(name="app"))
    project("dkproj_b", APP.format(name="celery"))
    project("dkproj_c.celery", APP.format(name="app"))
    project("dkproj_d", APP.format(name="worker_app"))
    project("dkproj_e", APP.format(name="custom") + "def make():\n    return custom\n")
    assert load_app("dkproj_a").main == "p"
    assert load_app("dkproj_b").main == "p"
    assert load_app("dkproj_c").main == "p"
    assert load_app("dkproj_d").main == "p"
    assert load_app("dkproj_d:worker_app").main == "p"
    assert load_app("dkproj_e:make").main == "p"


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        ("raise RuntimeError('settings missing')", "dkbad_a", "RuntimeError: settings missing"),
        ("import sys\nsys.exit(3)", "dkbad_b", "SystemExit"),
        ("x = 1", "dkbad_c", "no Celery app found"),
        ("x = 1", "dkbad_d:nope", "has no attribute 'nope'"),
        ("x = 1", "dkbad_e:x", "is not a Celery app"),
        ("def f(:\n  pass", "dkbad_f", "SyntaxError"),
    ],
)
def test_failures_are_usage_errors_with_the_cause(project, source, spec, message):
    project(spec.split(":")[0], source)
    with pytest.raises(UsageError, match=message) as info:
        load_app(spec)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("spec", ["", ":app", "a..b", "."])
def test_malformed_specs(spec):
    with pytest.raises(UsageError, match="invalid app"):
        load_app(spec)


def test_missing_module():
    with pytest.raises(UsageError, match="No module named 'dk_no_such_module'"):
        load_app("dk_no_such_module")
