"""Small formatting helpers shared by the text renderers."""

from __future__ import annotations

from collections.abc import Sequence


def duration(seconds: float | None) -> str:
    """``3725`` -> ``1h 2m``; ``42.5`` -> ``42s``; negative -> ``overdue 5s``."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return "overdue " + duration(-seconds)
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def listed(names: Sequence[str], limit: int = 5) -> str:
    """``a, b, c``; a long list as its first ``limit`` names and how many more (one line)."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def count(value: int | None) -> str:
    """A count, or ``?`` when unknown (never a misleading 0)."""
    return "?" if value is None else str(value)
