"""Live progress on stderr: what remains, the rate, elapsed time and the estimated time left.

On a terminal one line is redrawn in place; otherwise (CI logs, ``kubectl logs``) a plain line is
written when the remaining count changes (at most once a second), and every ``interval`` seconds
otherwise.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from deploykit.orchestrate.common import Progress
from deploykit.output.humanize import duration

#: Plain (non-TTY) output: at most one line per this many seconds while the count changes.
MIN_GAP = 1.0
#: Seconds of history the rate is measured over.
RATE_WINDOW = 30.0


class ProgressDisplay:
    """A progress callback for the orchestration machines."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self.clock = clock
        self.enabled = enabled
        self._history: deque[tuple[float, int]] = deque()
        self._phase: str | None = None
        self._last_line = ""
        self._last_written = float("-inf")
        self._last_remaining: int | None = None
        self._drawn = False

    def __call__(self, progress: Progress) -> None:
        if not self.enabled:
            return
        if progress.phase != self._phase:
            self.finish()
            self._phase = progress.phase
            self._history.clear()
            self._last_remaining = None
        self._history.append((progress.elapsed, progress.remaining))
        while self._history and progress.elapsed - self._history[0][0] > RATE_WINDOW:
            self._history.popleft()
        line = self.format(progress)
        now = self.clock()
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
            self.stream.flush()
            self._drawn = True
        elif self._due(progress, now):
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last_written = now
        self._last_remaining = progress.remaining
        self._last_line = line

    def _due(self, progress: Progress, now: float) -> bool:
        """Plain lines: on a change (at most one a second, but always the final 0), else every interval."""
        if now - self._last_written >= self.interval:
            return True
        if progress.remaining == self._last_remaining:
            return False
        return progress.remaining == 0 or now - self._last_written >= MIN_GAP

    def rate(self) -> float | None:
        """Tasks (or workers, messages) finished per second over the recent window."""
        if len(self._history) < 2:
            return None
        (t0, r0), (t1, r1) = self._history[0], self._history[-1]
        if t1 <= t0:
            return None
        return max(r0 - r1, 0) / (t1 - t0)

    def format(self, progress: Progress) -> str:
        rate = self.rate()
        parts = [f"{progress.phase}: {progress.remaining} left"]
        if progress.detail:
            parts[0] += f" ({progress.detail})"
        parts.append(f"{rate:.2f}/s" if rate is not None else "rate -")
        parts.append(f"elapsed {duration(progress.elapsed)}")
        if progress.remaining == 0:
            parts.append("done")
        elif rate:
            parts.append(f"ETA {duration(progress.remaining / rate)}")
        else:
            parts.append("ETA ?")
        return " · ".join(parts)

    def finish(self) -> None:
        """End the current line (call before printing anything else on stderr)."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
