"""Small formatting helpers shared by the text renderers."""

from __future__ import annotations


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


def count(value: int | None) -> str:
    """A count, or ``?`` when unknown (never a misleading 0)."""
    return "?" if value is None else str(value)
