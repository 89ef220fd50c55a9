"""Text output when piped: one line per fact, never wrapped mid-word."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest

from deploykit.brokers.base import BrokerSettings
from deploykit.inspection import Hazard, ScheduledEntry, ScheduledView
from deploykit.output.text import console, render_scheduled

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


def _entry(n: int) -> ScheduledEntry:
    long_message = "due later, after the visibility timeout redelivers it: " + "x" * 150 + "-end"
    return ScheduledEntry(
        id=f"id-{n}",
        name="shop.send",
        eta=NOW + timedelta(hours=1),
        seconds_left=3600,
        location="queue",
        worker=None,
        queue="emails",
        args="(1,)",
        kwargs="{}",
        hazards=(Hazard("ETA_BEYOND_VISIBILITY_TIMEOUT", long_message),),
    )


def test_piped_output_keeps_each_fact_on_one_line_and_groups_alike_hazards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr("sys.stdout", buffer)
    monkeypatch.delenv("COLUMNS", raising=False)
    out = console()
    view = ScheduledView(tuple(_entry(n) for n in range(30)), None, BrokerSettings())
    render_scheduled(view, out)
    lines = buffer.getvalue().splitlines()
    hazard_lines = [line for line in lines if "ETA_BEYOND_VISIBILITY_TIMEOUT" in line]
    assert len(hazard_lines) == 1  # 30 alike messages: one fact
    assert hazard_lines[0].endswith("x-end (and 29 more like it)")
    assert "queue (not taken yet)" in buffer.getvalue()
