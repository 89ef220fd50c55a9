"""Malformed input thrown at every command: never a traceback, never a password, a documented exit
code, nothing written to the broker.

Property-based (hypothesis), in process (typer's ``CliRunner``: no user code is imported, so no
subprocess is needed), with bounded examples so that it stays fast. Brokers are either unreachable
(a closed port on 127.0.0.1: every URL that could connect names it, so nothing here can reach the
machine's real Redis or RabbitMQ) or a private, empty Redis database that must stay empty.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from deploykit.cli import app
from deploykit.config import parse_duration
from deploykit.demo.processes import free_port
from deploykit.errors import ExitCode, UsageError

SECRET = "Fz-s3cret-Q7"
#: Every documented exit code a command may end with on bad input; 70 (a deploykit bug) and 130
#: (interrupted) must never appear.
DOCUMENTED = {int(c) for c in ExitCode} - {int(ExitCode.INTERNAL), int(ExitCode.INTERRUPTED)}
CLOSED = free_port()  # nothing listens here
DEAD_MGMT = f"http://mgmt:{SECRET}@127.0.0.1:{CLOSED}/"

runner = CliRunner()

# A manifest as `deploykit manifest snapshot` writes it, to be broken in every way.
VALID_MANIFEST: dict[str, Any] = {
    "beat": [],
    "generator": {"celery": "5.7.0", "kombu": "5.7.0"},
    "schema": 1,
    "tasks": {
        "shop.add": {
            "bound": False,
            "file": "proj/tasks.py",
            "ignore": [],
            "line": 4,
            "module": "proj.tasks",
            "name": "shop.add",
            "options": {
                "acks_late": False,
                "ignore_result": False,
                "max_retries": 3,
                "reject_on_worker_lost": None,
                "serializer": "json",
                "soft_time_limit": None,
                "time_limit": None,
                "typing": True,
            },
            "parameters": [
                {
                    "annotation": None,
                    "default": None,
                    "has_default": False,
                    "kind": "POSITIONAL_OR_KEYWORD",
                    "name": "x",
                },
                {
                    "annotation": None,
                    "default": "1",
                    "has_default": True,
                    "kind": "POSITIONAL_OR_KEYWORD",
                    "name": "y",
                },
            ],
            "qualname": "add",
            "queue": "celery",
        }
    },
}
VALID_TEXT = json.dumps(VALID_MANIFEST, indent=2)

# -- the cases found by hand (issue 11) ---------------------------------------------------------
HAND_FOUND = [
    "amqp://[::1",
    f"amqp://guest:{SECRET}@[::1",
    "sqs://",
    "redis://host:6379/abc",
    f"redis://:{SECRET}@127.0.0.1:{CLOSED}/abc",
]

# -- strategies -------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)

#: Ports that can never reach a real broker: the closed one, or ones no URL parser accepts.
bad_ports = st.one_of(
    st.just(str(CLOSED)),
    st.integers(65536, 10**7).map(str),
    st.integers(-9, -1).map(str),
    st.text(alphabet="abc:x[]%", min_size=1, max_size=4),
)
#: Well-formed and unreachable: the command gets as far as connecting.
unreachable_brokers = st.sampled_from(
    [
        f"redis://:{SECRET}@127.0.0.1:{CLOSED}/0",
        f"rediss://u:{SECRET}@127.0.0.1:{CLOSED}/3",
        f"amqp://u:{SECRET}@127.0.0.1:{CLOSED}//",
        f"pyamqp://u:{SECRET}@127.0.0.1:{CLOSED}/vh",
        f"sentinel://:{SECRET}@127.0.0.1:{CLOSED}/0",
        f"redis://:{SECRET}@127.0.0.1:{CLOSED}/0;redis://:{SECRET}@[::1]:{CLOSED}/0",
        f"redis+socket://:{SECRET}@/nonexistent/redis.sock",
    ]
)
broker_urls = st.one_of(
    unreachable_brokers,
    unreachable_brokers,
    st.sampled_from(HAND_FOUND),
    st.builds(
        lambda scheme, user, host, port, path: f"{scheme}://{user}:{SECRET}@{host}:{port}{path}",
        st.sampled_from(
            ["redis", "rediss", "REDIS", "sentinel", "amqp", "amqps", "pyamqp", "nosuch", "redis+socket"]
            # sqs:// only while boto3 is missing: with it, kombu would go to AWS
            + ([] if importlib.util.find_spec("boto3") else ["sqs"])
        ),
        st.sampled_from(["u", "", "guest", "us%er"]),
        st.sampled_from(["127.0.0.1", "[::1]", "[::1", "localhost", "", "[", "]", "h h"]),
        bad_ports,
        st.one_of(st.sampled_from(["/0", "//", "/", "", "/15", "/-1", "/abc", "/%2F"]), st.text(max_size=10)),
    ),
    st.builds(
        lambda a, b: f"redis://:{SECRET}@127.0.0.1:{CLOSED}/0;{a}{b}",
        st.sampled_from(["redis://", "amqp://", "", ";", "x"]),
        st.text(alphabet="/0123456789:@[]", max_size=8),
    ),
    # No ':' at all: never a URL, so never one that reaches a real broker by its default port.
    st.text(alphabet=st.characters(blacklist_characters=":", blacklist_categories=("Cs",)), max_size=30),
    st.just(f"filesystem://u:{SECRET}@"),
    st.just(f"redis+socket://:{SECRET}@/nonexistent/redis.sock"),
)
management_urls = st.one_of(
    st.just(DEAD_MGMT),
    st.builds(
        lambda scheme, host, port, path: f"{scheme}://mgmt:{SECRET}@{host}:{port}{path}",
        st.sampled_from(["http", "https", "ftp", "amqp", "HTTP", ""]),
        st.sampled_from(["127.0.0.1", "[::1", "", "[::1]"]),
        bad_ports,
        st.text(max_size=8),
    ),
    st.text(alphabet=st.characters(blacklist_characters=":", blacklist_categories=("Cs",)), max_size=20),
)
durations = st.one_of(
    st.sampled_from(
        [
            "",
            "-1",
            "0",
            "abc",
            "1e999",
            "nan",
            "inf",
            "-inf",
            "10 m",
            "5m3",
            "1h30m",
            "9" * 400,
            "-0",
            "\x00",
            "1.5.5s",
        ]
    ),
    st.text(max_size=12),
)
#: Keys only: a filesystem data folder that exists would make the filesystem transport reachable.
OPTION_KEYS = [
    "master_name",
    "global_keyprefix",
    "priority_steps",
    "visibility_timeout",
    "sep",
    "sentinel_kwargs",
    "min_other_sentinels",
    "socket_timeout",
    "connect_timeout",
    "unacked_key",
    "confirm_publish",
    "max_retries",
]
transport_options = st.one_of(
    st.just(json.dumps({"master_name": "mymaster"})),
    st.dictionaries(st.sampled_from(OPTION_KEYS), json_values, max_size=4).map(json.dumps),
    st.dictionaries(st.sampled_from(OPTION_KEYS), json_values, max_size=4).map(json.dumps),
    json_values.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
    st.text(max_size=20),
)
worker_patterns = st.one_of(
    st.sampled_from(["*", "w1@*", "[", "[!", "\\", "*@*@*", ""]), st.text(max_size=12)
)


@st.composite
def manifest_texts(draw: st.DrawFn, *, broken: bool = False) -> bytes:
    """A manifest: truncated, wrong types, huge, binary, deeply nested, not JSON, or valid.
    ``broken``: only the kinds no reader may accept."""
    kinds = ["truncated", "wrong-type", "huge", "binary", "nested", "text", "valid", "valid"]
    kind = draw(st.sampled_from(["truncated", "binary", "nested"] if broken else kinds))
    if kind == "truncated":
        return VALID_TEXT[: draw(st.integers(0, len(VALID_TEXT) - 2))].encode()
    if kind == "wrong-type":
        document = json.loads(VALID_TEXT)
        path = draw(
            st.sampled_from(
                [
                    (),
                    ("schema",),
                    ("tasks",),
                    ("beat",),
                    ("tasks", "shop.add"),
                    ("tasks", "shop.add", "parameters"),
                    ("tasks", "shop.add", "options"),
                    ("tasks", "shop.add", "name"),
                    ("tasks", "shop.add", "line"),
                    ("tasks", "shop.add", "ignore"),
                ]
            )
        )
        value = draw(json_values)
        if not path:
            return json.dumps(value).encode()
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return json.dumps(document).encode()
    if kind == "huge":
        document = json.loads(VALID_TEXT)
        document["tasks"]["shop.add"]["qualname"] = "x" * 3_000_000
        return json.dumps(document).encode()
    if kind == "binary":
        return b"\x80" + draw(st.binary(max_size=200))  # never valid UTF-8
    if kind == "nested":
        depth = draw(st.sampled_from([100, 10_000, 200_000]))
        return ("[" * depth + "]" * depth).encode()
    if kind == "text":
        return draw(st.text(max_size=100)).encode("utf-8", "surrogatepass")
    return VALID_TEXT.encode()


#: Tables for ``[tool.deploykit]``: broken TOML, wrong types, and the values above.
@st.composite
def pyproject_texts(draw: st.DrawFn) -> str | None:
    kind = draw(
        st.sampled_from(["none", "none", "none", "none", "broken", "wrong-types", "values", "values"])
    )
    if kind == "none":
        return None
    if kind == "broken":
        return draw(
            st.sampled_from(
                [
                    "[tool.deploykit\n",
                    "[tool]\ndeploykit = 3\n",
                    '[tool.deploykit]\nbroker = "a"\nbroker = "b"\n',
                    "\x00\x01",
                    "[tool.deploykit]\ntimeout = \n",
                ]
            )
        ) + draw(st.text(max_size=10))
    if kind == "wrong-types":
        key = draw(
            st.sampled_from(["app", "broker", "management_url", "timeout", "transport_options", "manifest"])
        )
        value = draw(st.sampled_from(["3", "true", "[1, 2]", "{a = 1}", "1979-05-27", "-1.5", '"nope"']))
        return f"[tool.deploykit]\n{key} = {value}\n"
    broker = draw(broker_urls)
    timeout = draw(durations)
    options = draw(
        st.dictionaries(st.sampled_from(OPTION_KEYS), st.integers() | st.text(max_size=5), max_size=3)
    )
    lines = [
        "[tool.deploykit]",
        f"broker = {json.dumps(broker)}",
        f"timeout = {json.dumps(timeout)}",
        f"management_url = {json.dumps(DEAD_MGMT)}",
        'app = "dk_fuzz_missing_module:app"' if draw(st.booleans()) else "",
        "[tool.deploykit.transport_options]",
        *(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in options.items()),
    ]
    return "\n".join(lines) + "\n"


# -- running ----------------------------------------------------------------------------------
@contextlib.contextmanager
def workdir(pyproject: str | None, manifest: bytes | None) -> Iterator[Path]:
    """A fresh current directory (pyproject.toml and manifests are looked up from there)."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="deploykit-fuzz-") as tmp:
        root = Path(tmp)
        if pyproject is not None:
            (root / "pyproject.toml").write_text(pyproject, encoding="utf-8", errors="surrogatepass")
        if manifest is not None:
            (root / "manifest.json").write_bytes(manifest)
        (root / "valid.json").write_text(VALID_TEXT)
        os.chdir(root)
        try:
            yield root
        finally:
            os.chdir(previous)


def invoke(args: list[str], env: Mapping[str, str | None] | None = None) -> Any:
    cleared: dict[str, str | None] = {
        key: None
        for key in os.environ
        if key.startswith(("DEPLOYKIT_", "GITHUB_", "CELERY_", "DJANGO_")) or key in {"CI", "GITLAB_CI"}
    }
    cleared.update({"NO_COLOR": "1", "COLUMNS": "200", "XDG_STATE_HOME": str(Path.cwd() / "state")})
    # An environment variable cannot hold a NUL byte (the OS refuses it before deploykit runs).
    cleared.update({k: v.replace("\x00", "") if v is not None else None for k, v in (env or {}).items()})
    return runner.invoke(app, args, env=cleared)


def assert_contract(result: Any, args: list[str]) -> None:
    """Documented exit code, no traceback, no password, whatever went in."""
    shown = result.output  # stdout and stderr
    where = f"deploykit {args!r} -> {result.exit_code}\n{shown[-3000:]}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(where) from result.exception
    assert result.exit_code in DOCUMENTED, where
    assert "Traceback" not in shown, where
    assert SECRET not in shown, where


def _command(draw: st.DrawFn) -> list[str]:
    """One command line (the part after the global options), with fuzzed values."""
    name = draw(
        st.sampled_from(
            [
                "workers",
                "queues",
                "scheduled",
                "status",
                "check",
                "scan",
                "drain",
                "resume",
                "shutdown",
                "restart",
                "deploy",
                "doctor",
                "probe",
                "manifest diff",
                "manifest snapshot",
                "manifest rules",
            ]
        )
    )
    pattern = draw(worker_patterns)
    duration = draw(durations)
    json_flag = ["--json"] if draw(st.booleans()) else []
    manifest = draw(st.sampled_from(["manifest.json", "valid.json", "missing.json", ".", ""]))
    extra: dict[str, list[str]] = {
        "workers": [],
        "queues": ["-Q", draw(st.text(max_size=10))],
        "scheduled": ["--within", duration],
        "status": ["--fail-if-busy"],
        "check": ["-m", manifest, "--broker"],
        "scan": ["--against", manifest, "--oversize", draw(st.sampled_from(["1m", "x", "-1", "", "1e99k"]))],
        "drain": ["-w", pattern, "--timeout", duration, "--record-ttl", draw(durations), "-q"],
        "resume": ["-w", pattern],
        "shutdown": ["-w", pattern, "--timeout", duration, "-q"],
        "restart": ["-w", pattern, "--exec", "true", "--drain-timeout", duration, "--dry-run", "-q"],
        "deploy": ["--run", "true", "-w", pattern, "--drain-timeout", duration, "-q"],
        "doctor": ["--offline"] if draw(st.booleans()) else [],
        "probe": ["--timeout", duration],
        "manifest diff": [manifest, draw(st.sampled_from(["manifest.json", "valid.json"]))],
        "manifest snapshot": ["-o", "-"],
        "manifest rules": [],
    }
    return [*name.split(), *extra[name], *(json_flag if name not in {"manifest rules"} else [])]


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[list[str], dict[str, str | None], str | None, bytes | None]:
    """Global options, a command with its options, the environment, a pyproject and a manifest."""
    head: list[str] = []
    if draw(st.booleans()):
        head += ["-b", draw(broker_urls)]
    head += ["--management-url", draw(management_urls) if draw(st.booleans()) else DEAD_MGMT]
    if draw(st.integers(0, 3)) == 0:
        head += ["--timeout", draw(durations)]
    env: dict[str, str | None] = {}
    if draw(st.booleans()):
        env["DEPLOYKIT_TRANSPORT_OPTIONS"] = draw(transport_options)
    if draw(st.integers(0, 3)) == 0:
        env["DEPLOYKIT_BROKER"] = draw(broker_urls)
    return head + _command(draw), env, draw(pyproject_texts()), draw(manifest_texts())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_lines())
def test_bad_input_at_every_command_never_traces_nor_leaks(case: Any) -> None:
    args, env, pyproject, manifest = case
    with workdir(pyproject, manifest):
        result = invoke(args, env)
    event(f"exit {result.exit_code}")
    assert_contract(result, args)


# -- the hand-found cases, at every command that takes a broker -----------------------------
BROKER_COMMANDS = [
    ["workers"],
    ["queues"],
    ["scheduled"],
    ["status"],
    ["builds"],
    ["scan", "--against", "valid.json"],
    ["drain", "-q"],
    ["resume"],
    ["shutdown", "-q"],
    ["restart", "--exec", "true", "-q"],
    ["deploy", "--run", "true", "-q"],
    ["doctor"],
    ["probe"],
]


@pytest.mark.parametrize("command", BROKER_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://[::1", "invalid broker URL 'amqp://[::1': invalid ipv6 url"),
        (f"amqp://guest:{SECRET}@[::1", "invalid broker URL 'amqp://guest:***@[::1': invalid ipv6 url"),
        ("redis://host:6379/abc", "the Redis database must be a number, not 'abc'"),
        (f"guest:{SECRET}@localhost:5672", "invalid broker URL 'guest:***@localhost:5672'"),
    ],
)
def test_hand_found_broker_urls_are_one_line_usage_errors(command: list[str], url: str, message: str) -> None:
    with workdir(None, None):
        result = invoke(["-b", url, "--management-url", DEAD_MGMT, *command])
    assert_contract(result, command)
    assert result.exit_code == ExitCode.USAGE
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deploykit: error: ") and message in lines[0], lines


@pytest.mark.parametrize("command", BROKER_COMMANDS, ids=lambda c: c[0])
def test_a_transport_without_its_client_library_names_what_to_install(command: list[str]) -> None:
    if importlib.util.find_spec("boto3") is not None:
        pytest.skip("boto3 is installed: this case is about a missing client library")
    with workdir(None, None):
        result = invoke(["-b", "sqs://", "--management-url", DEAD_MGMT, *command])
    assert_contract(result, command)
    assert result.exit_code == ExitCode.USAGE
    assert "ModuleNotFoundError" not in result.output
    assert "boto3" in result.output or "sqs" in result.output


# -- nothing written: a private, empty Redis database stays empty ------------------------------
def _invalid_duration(text: str) -> bool:
    if text.strip().lower() in {"", "0", "none", "forever"}:
        return False
    try:
        parse_duration(text)
    except UsageError:
        return True
    return False


invalid_durations = st.one_of(
    st.sampled_from(["abc", "-1", "10x", "1h-", "1.5.5s", "9" * 40 + "q", "\x00"]),
    st.text(max_size=10).filter(_invalid_duration),
)
invalid_options = st.one_of(
    st.sampled_from(
        ["{", "[]", "3", '"x"', "null", '{"priority_steps": "x"}', '{"visibility_timeout": "soon"}']
    ),
    # not "" (an empty variable is an unset one)
    st.text(min_size=1, max_size=10).filter(lambda t: not t.strip().startswith("{")),
)


@st.composite
def rejected_before_the_broker(
    draw: st.DrawFn,
) -> tuple[list[str], dict[str, str | None], str | None, bytes | None]:
    """A command line with one input that must be refused before any broker traffic."""
    command = draw(st.sampled_from([c for c in BROKER_COMMANDS if c[0] not in {"doctor", "scan"}]))
    what = draw(st.sampled_from(["timeout", "options", "pyproject", "deadline", "manifest"]))
    args: list[str] = []
    env: dict[str, str | None] = {}
    pyproject = None
    manifest = None
    if what == "timeout":
        args = ["--timeout", draw(invalid_durations)]
    elif what == "options":
        env["DEPLOYKIT_TRANSPORT_OPTIONS"] = draw(invalid_options)
    elif what == "pyproject":
        pyproject = draw(
            st.sampled_from(
                [
                    "[tool.deploykit\n",
                    "[tool.deploykit]\ntimeout = [1]\n",
                    "[tool.deploykit]\ntransport_options = 3\n",
                ]
            )
        )
    elif what == "deadline" and command[0] in {"drain", "shutdown", "probe", "scheduled"}:
        flag = "--within" if command[0] == "scheduled" else "--timeout"
        command = [*command, flag, draw(invalid_durations)]
    else:
        manifest = draw(manifest_texts(broken=True))
        command = ["scan", "--against", "manifest.json"]
    return args + command, env, pyproject, manifest


@pytest.fixture
def private_db(redis_url: str) -> str:
    return redis_url


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=rejected_before_the_broker())
def test_refused_input_writes_nothing_to_the_broker(private_db: str, case: Any) -> None:
    import redis

    args, env, pyproject, manifest = case
    client = redis.Redis.from_url(private_db)
    try:
        client.flushdb()  # each example starts from an empty database (the fixture is shared)
        with workdir(pyproject, manifest):
            result = invoke(["-b", private_db, "--management-url", DEAD_MGMT, *args], env)
        assert_contract(result, args)
        assert result.exit_code == ExitCode.USAGE, result.output
        assert client.dbsize() == 0, sorted(client.keys())
    finally:
        client.close()


# -- what the fuzzing found (each was exit 70, a traceback) ------------------------------------
@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["drain", "-q", "--record-ttl", "1e999"], {}, "invalid --record-ttl '1e999'"),
        (["--timeout", "nan", "status"], {}, "invalid timeout 'nan'"),
        (["scheduled", "--within", "inf"], {}, "'inf'"),
        (["workers"], {"DEPLOYKIT_TRANSPORT_OPTIONS": '{"connect_timeout": [1]}'}, "connect_timeout must be"),
        (["workers"], {"DEPLOYKIT_TRANSPORT_OPTIONS": '{"socket_timeout": NaN}'}, "socket_timeout must be"),
        (["status"], {"DEPLOYKIT_TRANSPORT_OPTIONS": '{"master_name": 3}'}, "master_name must be a string"),
        (
            ["status"],
            {"DEPLOYKIT_TRANSPORT_OPTIONS": '{"priority_steps": [0, "x"]}'},
            "priority_steps must be",
        ),
    ],
)
def test_found_by_fuzzing(args: list[str], env: dict[str, str], message: str) -> None:
    with workdir(None, None):
        result = invoke(
            ["-b", f"redis://:{SECRET}@127.0.0.1:{CLOSED}/0", "--management-url", DEAD_MGMT, *args], env
        )
    assert_contract(result, args)
    assert result.exit_code == ExitCode.USAGE and message in result.output, result.output
