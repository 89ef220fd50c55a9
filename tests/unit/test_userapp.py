"""Importing the user's app: like `celery -A`, failures are usage errors with the real message."""

from __future__ import annotations

import datetime
import decimal
import enum
import logging
import sys
import textwrap

import pytest

from deploykit.errors import UsageError
from deploykit.userapp import load_app, load_warnings, plain_value, read_settings, safe_repr


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


def test_syntax_error_names_the_file_and_line(project):
    project("dkbad_syntax", "x = 1\ndef f(:\n  pass\n")
    with pytest.raises(UsageError, match=r"SyntaxError: .*\(dkbad_syntax\.py:2\)"):
        load_app("dkbad_syntax")


def test_error_location_is_the_users_frame_not_the_library(project):
    # os.environ["X"] raises inside os.py: the line to show is the settings line that asked.
    project("dkbad_env", "import os\n\nSECRET = os.environ['DK_NO_SUCH_VARIABLE_123']\n")
    with pytest.raises(UsageError) as info:
        load_app("dkbad_env")
    assert info.value.message.endswith("KeyError: 'DK_NO_SUCH_VARIABLE_123' (dkbad_env.py:3)")


# --- setting the app up as a worker does ------------------------------------------------------

SIGNALS_APP = """
import logging
from celery import Celery

app = Celery("p", broker="memory://", set_as_current=False)
calls = []


@app.on_after_configure.connect
def check_cache(sender, **kwargs):
    calls.append("configure")
    raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


@app.on_after_finalize.connect
def setup_periodic_tasks(sender, **kwargs):
    calls.append("finalize")
    raise RuntimeError("cache unavailable")
    sender.add_periodic_task(60.0, ping.s(), name="never-added")


@app.task(shared=False)
def ping():
    return "pong"


try:
    import dk_optional_plugin_missing  # noqa: F401
except ImportError as exc:
    logging.getLogger("p.plugins").error("plugin disabled: %s", exc)
"""


def test_signal_handler_errors_and_logged_errors_are_warnings(project):
    from celery.utils.dispatch.signal import Signal

    send = Signal.send
    project("dksignals", SIGNALS_APP)
    warned: list[str] = []
    app = load_app("dksignals", warn=warned.append)
    module = sys.modules["dksignals"]
    assert module.calls == ["configure", "finalize"]  # configured and finalized, like a worker
    assert app.finalized
    assert "dksignals.ping" in app.tasks
    assert app.conf.beat_schedule == {}  # the handler raised before adding its entry
    assert warned == [
        "error logged while loading the app by p.plugins: plugin disabled: No module named "
        "'dk_optional_plugin_missing'",
        "app.on_after_configure handler dksignals.check_cache raised ConnectionError: Error 111 "
        "connecting to 127.0.0.1:1. Connection refused. (dksignals.py:12): what it sets up after "
        "that point (periodic tasks, queues, routes) is missing",
        "app.on_after_finalize handler dksignals.setup_periodic_tasks raised RuntimeError: cache "
        "unavailable (dksignals.py:18): what it sets up after that point (periodic tasks, queues, "
        "routes) is missing",
    ]
    assert load_warnings(app) == tuple(warned)
    # Loading again (another command step) neither repeats the work nor the warnings.
    again: list[str] = []
    assert load_app("dksignals", warn=again.append) is app
    assert again == [] and module.calls == ["configure", "finalize"]
    assert Signal.send is send  # the watch is removed


def test_errors_logged_while_importing_task_modules_are_warnings(project):
    project(
        "dklogged",
        """
        from celery import Celery
        app = Celery("p", broker="memory://", set_as_current=False, include=["dklogged_tasks"])
        """,
    )
    project(
        "dklogged_tasks",
        """
        import logging
        log = logging.getLogger("dklogged.tasks")
        try:
            raise TimeoutError("search index unreachable")
        except TimeoutError:
            log.exception("search disabled")
        log.warning("only a warning: not reported")
        """,
    )
    warned: list[str] = []
    handlers = list(logging.getLogger().handlers)
    load_app("dklogged", warn=warned.append)
    assert warned == [
        "error logged while loading the app by dklogged.tasks: search disabled: TimeoutError: "
        "search index unreachable (dklogged_tasks.py:5)"
    ]
    assert logging.getLogger().handlers == handlers  # the capture is removed


def test_task_modules_import_errors_and_finalize_errors_are_usage_errors(project):
    project(
        "dkfinal",
        """
        from celery import Celery, Task
        app = Celery("p", broker="memory://", set_as_current=False)

        class DatabaseTask(Task):
            def __init_subclass__(cls, **kwargs):  # runs when finalize builds the task class
                raise LookupError("no such backend")

        @app.task(base=DatabaseTask, shared=False)
        def save():
            pass
        """,
    )
    with pytest.raises(UsageError, match=r"cannot finalize the app .*LookupError: no such backend"):
        load_app("dkfinal")
    project(
        "dkimports",
        "from celery import Celery\napp = Celery('p', set_as_current=False, include=['dkimports_t'])\n",
    )
    project("dkimports_t", "raise SystemExit(3)\n")
    with pytest.raises(UsageError, match=r"cannot import the app's task modules: SystemExit: 3"):
        load_app("dkimports")


def test_settings_read_follow_the_namespace_and_only_the_keys_asked(project):
    project(
        "dknamespaced",
        """
        from celery import Celery

        class Exploding:
            def __repr__(self):
                raise AssertionError("repr of an unrelated setting")

        class Config:
            CELERY_TASK_ACKS_LATE = True
            CELERY_TASK_TIME_LIMIT = 300
            CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 7200}
            LANGUAGES = [("en", Exploding())]

            @property
            def DATABASES(self):
                raise AssertionError("an unrelated setting was read")

        app = Celery("p", set_as_current=False)
        app.config_from_object(Config(), namespace="CELERY")
        """,
    )
    app = load_app("dknamespaced")
    values, explicit = read_settings(
        app, ["task_acks_late", "task_time_limit", "broker_transport_options", "task_serializer", "nope"]
    )
    assert values == {
        "task_acks_late": True,
        "task_time_limit": 300,
        "broker_transport_options": {"visibility_timeout": 7200},
        "task_serializer": "json",
    }
    assert explicit == {"task_acks_late", "task_time_limit", "broker_transport_options"}


# --- showing user values without running their code -------------------------------------------


class _Lazy:
    """Like Django's lazy translation: evaluating it (repr, str, __class__) runs user code."""

    evaluated = 0

    def __repr__(self) -> str:
        type(self).evaluated += 1
        raise RuntimeError("AppRegistryNotReady")

    @property  # type: ignore[misc]
    def __class__(self):  # what Django's LazyObject does
        type(self).evaluated += 1
        return str


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 9


SAFE_REPR_CASES = [
    (None, "None"),
    ((1, "a", 2.5, b"x"), "(1, 'a', 2.5, b'x')"),
    ((1,), "(1,)"),
    ([], "[]"),
    ({"b": {3, 1, 2}, "a": frozenset()}, "{'b': {1, 2, 3}, 'a': frozenset()}"),
    ({"z", "a"}, "{'a', 'z'}"),
    (datetime.timedelta(seconds=90), "datetime.timedelta(seconds=90)"),
    (decimal.Decimal("1.5"), "Decimal('1.5')"),
    (Color.RED, "<Color.RED: 'red'>"),
    (Level.HIGH, "<Level.HIGH: 9>"),
    (int, "<class 'int'>"),
    (len, "<built-in function len>"),
    (_Lazy(), f"<{__name__}._Lazy object>"),
    ([_Lazy(), 1], f"[<{__name__}._Lazy object>, 1]"),
    (object(), "<object object>"),
]


@pytest.mark.parametrize(
    ("value", "text"),
    SAFE_REPR_CASES,
    ids=[text for _, text in SAFE_REPR_CASES],  # pytest's own isinstance() would evaluate a lazy value
)
def test_safe_repr(value, text):
    before = _Lazy.evaluated
    assert safe_repr(value) == text
    assert _Lazy.evaluated == before  # never evaluated


def test_safe_repr_trusts_celery_schedules_and_strips_addresses():
    from celery.schedules import crontab

    assert safe_repr(crontab(minute="0", hour="4")) == "<crontab: 0 4 * * * (m/h/dM/MY/d)>"
    assert safe_repr(len) == "<built-in function len>"
    assert safe_repr(test_safe_repr) == "<function test_safe_repr>"


def test_plain_value_keeps_data_and_names_objects():
    before = _Lazy.evaluated
    assert plain_value({"a": [1, (2, 3)], "b": {"x"}, "c": _Lazy()}) == {
        "a": [1, [2, 3]],
        "b": ["x"],
        "c": f"<{__name__}._Lazy object>",
    }
    assert _Lazy.evaluated == before


def test_error_location_prefers_the_project_over_an_installed_client(project, tmp_path, monkeypatch):
    # A client library raises inside site-packages: the line to show is the project's call.
    site = tmp_path / "venv" / "site-packages"
    (site / "dkfakeclient").mkdir(parents=True)
    (site / "dkfakeclient" / "__init__.py").write_text(
        "def connect():\n    raise ConnectionRefusedError('connection refused')\n"
    )
    monkeypatch.syspath_prepend(str(site))
    project("dkbad_client", "import dkfakeclient\n\nCACHE = dkfakeclient.connect()\n")
    with pytest.raises(UsageError) as info:
        load_app("dkbad_client")
    assert info.value.message.endswith("ConnectionRefusedError: connection refused (dkbad_client.py:3)")
    sys.modules.pop("dkfakeclient", None)


def test_what_the_app_prints_while_loading_goes_to_stderr(project, capsys):
    project(
        "dkprints",
        """
        print("You are running this app as root, why?")
        from celery import Celery
        app = Celery("p", broker="memory://", set_as_current=False)

        @app.on_after_finalize.connect
        def report(sender, **kwargs):
            print("connectivity: ok")
        """,
    )
    load_app("dkprints")
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout is for --json documents and `snapshot -o -`
    assert "You are running this app as root, why?\nconnectivity: ok\n" in captured.err
