"""``deploykit doctor`` end to end: real Redis, real workers configured risky or safe, the real CLI."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from deploykit.demo.processes import free_port
from tests.cli import run_deploykit

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.configurable"

RISKY = {"task_acks_late": True, "broker_transport_options": {"visibility_timeout": 60}}
SAFE = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "task_time_limit": 120,
    "task_soft_time_limit": 110,
    "worker_prefetch_multiplier": 1,
    "worker_soft_shutdown_timeout": 10,
    "worker_enable_soft_shutdown_on_idle": True,
    "worker_eta_task_limit": 1000,
    "broker_transport_options": {"visibility_timeout": 7200},
}


def deploykit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_deploykit(*args, env=env)


def app_env(broker_url: str, settings: dict[str, Any]) -> dict[str, str]:
    return {"DEPLOYKIT_TEST_BROKER": broker_url, "DEPLOYKIT_TEST_SETTINGS": json.dumps(settings)}


def findings(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    doc = json.loads(result.stdout)
    assert doc["schema"] == "deploykit.doctor/2"
    return {f["rule"]: f for f in doc["findings"]}


def test_risky_config_is_flagged_with_exit_1(redis_url: str, start_workers: Any, tmp_path: Path) -> None:
    env = app_env(redis_url, RISKY)
    start_workers(redis_url, [("risky@dk", ("celery",))], app=APP, env=env)
    from celery import Celery

    producer = Celery("producer", broker=redis_url, set_as_current=False)
    producer.send_task("tests.apps.configurable.add", args=[1, 2], countdown=600)
    producer.close()
    conf = tmp_path / "celery.conf"
    conf.write_text("[program:worker]\ncommand = celery -A proj worker\nstopasgroup = true\n")

    result = deploykit("doctor", "-A", APP, "--json", "--supervisor-conf", str(conf), env=env)
    assert result.returncode == 1, result.stderr
    found = findings(result)
    # What a user must hear: killed workers lose acks_late tasks; the ETA will run twice.
    assert found["ACKS_LATE_WITHOUT_REJECT"]["level"] == "error"
    assert found["ACKS_LATE_WITHOUT_REJECT"]["where"] == ["app", "worker risky@dk"]
    assert (
        found["ACKS_LATE_WITHOUT_REJECT"]["docs"]
        == "https://deploykit.readthedocs.io/en/stable/rules/acks-late-without-reject/"
    )
    vt = found["VISIBILITY_TIMEOUT_BELOW_ETA"]
    assert vt["level"] == "error" and "worker risky@dk" in vt["where"] and "risky@dk" in vt["why"]
    assert found["PROCESS_GROUP_SIGNAL"]["file"] == str(conf) and found["PROCESS_GROUP_SIGNAL"]["line"] == 1
    assert "SOFT_SHUTDOWN_OFF_WITH_ETA" in found and "NO_TIME_LIMIT" in found
    assert "SETTING_DRIFT" not in found

    # The code now says reject_on_worker_lost, the running worker does not: drift, and the worker
    # is still flagged on its own. Text output names the fix and the docs anchor.
    fixed_code = app_env(redis_url, {**RISKY, "task_reject_on_worker_lost": True})
    text = deploykit("doctor", "-A", APP, "--format", "text", env=fixed_code)
    assert text.returncode == 1
    assert "SETTING_DRIFT" in text.stdout and "task_reject_on_worker_lost differs" in text.stdout
    assert "https://deploykit.readthedocs.io/en/stable/rules/acks-late-without-reject/" in text.stdout

    # Without -A the workers' own settings are audited; --fail-on never always exits 0.
    bare = deploykit("doctor", "-b", redis_url, "--json", "--fail-on", "never", env={})
    assert bare.returncode == 0, bare.stderr
    assert findings(bare)["ACKS_LATE_WITHOUT_REJECT"]["where"] == ["worker risky@dk"]

    github = deploykit("doctor", "-A", APP, "--format", "github", env=env)
    assert github.returncode == 1
    assert any(
        line.startswith("::error ") and "ACKS_LATE_WITHOUT_REJECT" in line
        for line in github.stdout.splitlines()
    )


def test_safe_config_passes_with_exit_0(redis_url: str, start_workers: Any) -> None:
    env = app_env(redis_url, SAFE)
    start_workers(redis_url, [("safe@dk", ("celery",))], app=APP, env=env)
    result = deploykit("doctor", "-A", APP, "--json", "--fail-on", "warning", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["summary"]["error"] == 0 and doc["summary"]["warning"] == 0
    assert doc["audited"]["workers"] == ["safe@dk"] and doc["audited"]["app"] is True


def test_bad_files_and_unreachable_broker(tmp_path: Path) -> None:
    env = app_env("redis://127.0.0.1:1/0", SAFE)
    missing = deploykit(
        "doctor", "-A", APP, "--offline", "--systemd-unit", str(tmp_path / "nope.service"), env=env
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    broken = tmp_path / "bad.conf"
    broken.write_text("[program:w\n")
    bad = deploykit("doctor", "-A", APP, "--offline", "--supervisor-conf", str(broken), env=env)
    assert bad.returncode == 2 and "not a valid supervisor" in bad.stderr
    offline = deploykit("doctor", "-A", APP, "--offline", "--json", env=env)
    assert offline.returncode == 0, offline.stderr
    down = deploykit("doctor", "-b", f"redis://127.0.0.1:{free_port()}/0", env={})
    assert down.returncode == 69, down.stderr


@pytest.mark.skipif(
    tuple(int(p) for p in __import__("celery").__version__.split(".")[:2]) < (5, 5),
    reason="quorum queues need Celery 5.5+ (older workers ask for global QoS)",
)
def test_rabbitmq_quorum_on_direct_exchange_and_held_eta(rabbitmq_url: str, start_workers: Any) -> None:
    env = {**app_env(rabbitmq_url, SAFE), "DEPLOYKIT_TEST_QUORUM_DIRECT": "1"}
    start_workers(rabbitmq_url, [("qq@dk", ("celery",))], app=APP, env=env)
    from celery import Celery

    producer = Celery("producer", broker=rabbitmq_url, set_as_current=False)
    from kombu import Exchange, Queue

    quorum = Queue(
        "celery", Exchange("celery", "direct"), "celery", queue_arguments={"x-queue-type": "quorum"}
    )
    producer.send_task("tests.apps.configurable.add", args=[1, 2], queue=quorum, countdown=7200)
    producer.close()
    time.sleep(1.0)  # let the worker take the ETA task into its timer

    result = deploykit("doctor", "-A", APP, "--json", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    found = findings(result)
    direct = found["DELAYED_DELIVERY_DIRECT_EXCHANGE"]
    assert "celery" in direct["why"] and "worker qq@dk" in direct["where"]
    # RabbitMQ's default 30-minute consumer_timeout closes the channel long before a 2 h ETA.
    held = found["CONSUMER_TIMEOUT_BELOW_ETA"]
    assert held["level"] == "error" and held["where"] == ["queue celery"] and "qq@dk" in held["why"]
    assert "CONFIRM_PUBLISH_OFF" in found
    assert not any("policies not read" in note for note in json.loads(result.stdout)["notes"])


def test_eta_task_waiting_in_a_queue_no_worker_took_is_audited(redis_url: str) -> None:
    """No worker runs: the countdown task waits in its queue, and whichever worker takes it
    holds it unacknowledged for 10 minutes, past the 60 s visibility timeout."""
    from celery import Celery

    env = app_env(redis_url, RISKY)
    producer = Celery("producer", broker=redis_url, set_as_current=False)
    producer.send_task("tests.apps.configurable.add", args=[1, 2], countdown=600)
    producer.close()

    result = deploykit("doctor", "-A", APP, "--json", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    found = findings(result)
    vt = found["VISIBILITY_TIMEOUT_BELOW_ETA"]
    assert vt["level"] == "error" and vt["where"] == ["app"]
    assert "shorter than the longest ETA waiting" in vt["message"]
    assert "SOFT_SHUTDOWN_OFF_WITH_ETA" in found
