"""``restart --exec``: the command template starts the worker again (here: a detached process)."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from tests.orchestrate.live import control, deploykit, result_json, wait_for

pytestmark = pytest.mark.integration


def test_restart_with_an_exec_template(redis_url, start_workers, tmp_path):
    start_workers(redis_url, [("w1@dk", ("celery",)), ("w2@dk", ("celery",))])
    template = (
        f"sh -c 'DEPLOYKIT_TEST_BROKER={redis_url} exec {sys.executable} -m celery -A tests.apps.basic "
        f"worker -n {{nodename}} -Q {{queues}} -c 1 --without-mingle --without-gossip "
        f"-f {tmp_path}/{{name}}.log > /dev/null 2>&1 &'"
    )
    plan = deploykit(redis_url, "restart", "--exec", template, "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    doc = result_json(plan)
    assert doc["status"] == "planned" and doc["starter"] == "exec"
    assert "-n w1@dk -Q celery" in doc["batches"][0]["restarts"][0]["target"]

    new_pids: list[int] = []
    try:
        proc = deploykit(
            redis_url, "restart", "--exec", template, "--min-consumers", "1", "--json", timeout=120
        )
        doc = result_json(proc)
        assert proc.returncode == 0, proc.stderr
        assert doc["status"] == "done" and doc["restarted"] == ["w1@dk", "w2@dk"]
        for batch in doc["batches"]:
            (r,) = batch["restarts"]
            assert r["new_pid"] and r["new_pid"] != r["old_pid"]
            new_pids.append(r["new_pid"])
        replies = control(redis_url).inspect(timeout=2).active_queues() or {}
        assert {n: [q["name"] for q in qs] for n, qs in replies.items()} == {
            "w1@dk": ["celery"],
            "w2@dk": ["celery"],
        }
    finally:
        for pid in new_pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        wait_for(lambda: not (control(redis_url).ping(timeout=0.5) or []), timeout=30, interval=0.5)

    # a template with an unknown placeholder is a usage error before anything changes
    bad = deploykit(redis_url, "restart", "--exec", "systemctl restart {service}")
    assert bad.returncode == 2 and "unknown placeholder {service}" in bad.stderr
