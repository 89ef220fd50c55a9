"""``make demo`` says only what is true: its narration waits until the workers hold the ETA tasks."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from deploykit.demo.__main__ import (
    held_by_workers,
    queue_work,
    start_shop_workers,
    tour_in_flight,
    wait_until_held,
)

pytestmark = pytest.mark.integration


def _section(output: str, command: str) -> str:
    """The output of the first ``$ deploykit <command>`` run, up to its exit code line."""
    start = output.index(f"$ deploykit {command}\n")
    return output[start : output.index("(exit code", start)]


def test_wait_until_held_is_bounded_and_polls_observable_state():
    now = [0.0]
    answers = iter([set(), {"a"}, {"a", "b"}])
    assert wait_until_held(
        {"a", "b"},
        held=lambda: next(answers),
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    assert now[0] == 1.0
    assert not wait_until_held(
        {"a"}, timeout=3, held=set, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)
    )


def test_the_first_act_narrates_the_eta_hazards_only_once_the_workers_hold_them(
    redis_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOYKIT_DEMO_BROKER", redis_url)
    from deploykit.demo.app import app, build_report

    assert app.conf.broker_url == redis_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYKIT_")}
    env.update({"DEPLOYKIT_DEMO_BROKER": redis_url, "DEPLOYKIT_APP": "deploykit.demo.app", "NO_COLOR": "1"})
    workers = start_shop_workers(env, tmp_path)
    try:
        # A busy (or slow, fresh) machine: the mailer's prefetch window is full of 4-second reports
        # when the ETA tasks are sent, so it takes them only seconds later.
        for account in range(8):
            build_report.delay(account, "busy")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            replies = app.control.inspect(timeout=1, destination=["mailer@demo"])
            held = len((replies.active() or {}).get("mailer@demo", [])) + len(
                (replies.reserved() or {}).get("mailer@demo", [])
            )
            if held >= 4:
                break
        eta_ids = queue_work(redis_url, reports=0)
        assert not set(eta_ids) <= held_by_workers(app), "the mailer took the ETA tasks at once"

        tour_in_flight(env, eta_ids)
        output = capfd.readouterr().out
    finally:
        for worker in workers:
            worker.kill()

    scheduled = _section(output, "scheduled")
    # "note the 30-minute countdown vs the 10-minute visibility timeout": held by a worker, flagged
    rows = [line for line in scheduled.splitlines() if "mailer@demo" in line]
    assert len(rows) == 4, scheduled
    assert any("shop.send_welcome_email" in r and re.search(r"\b29m|\b30m", r) for r in rows), scheduled
    assert "[ETA_BEYOND_VISIBILITY_TIMEOUT] shop.send_welcome_email" in scheduled
    assert "No scheduled" not in scheduled
    doctor = _section(output, "doctor")
    assert "visibility-timeout-below-eta" in doctor and "held by mailer@demo" in doctor, doctor
