"""``drain --until-empty --incompatible-with MANIFEST``: how many waiting messages the new release
would not run, counted by the compatibility scan (:func:`deploykit.scan.run.run_scan`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from deploykit.brokers.base import Broker
from deploykit.errors import UsageError
from deploykit.fleet.base import Fleet
from deploykit.orchestrate.drain import IncompatibleCounter


def incompatible_counter(broker: Broker, fleet: Fleet, manifest: Path) -> IncompatibleCounter:
    """``(queues, workers) -> breaking messages`` against the release described by ``manifest``.

    Refused (usage error) on a broker that cannot list waiting and held messages without consuming
    them: counting there would take the messages it counts.
    """
    from deploykit.manifest.model import read
    from deploykit.scan.run import run_scan

    if not (broker.reads_in_place and broker.shows_unacked):
        raise UsageError(
            "--incompatible-with needs a broker that lists waiting and held messages without "
            f"consuming them (Redis); {broker.kind} cannot: use plain --until-empty"
        )
    new = read(manifest)

    def count(queues: Sequence[str], workers: Sequence[str]) -> int:
        report = run_scan(
            broker=broker,
            new=new,
            old=None,
            now=datetime.now(timezone.utc),
            queues=list(queues),
            fleet=fleet,
            workers=list(workers),
            include_beat=False,
        )
        return int(report.breaking)

    return count
