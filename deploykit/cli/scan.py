"""``deploykit scan``: would the messages already waiting still run on the new code?"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from deploykit.cli import app
from deploykit.cli.common import (
    AppOpt,
    BrokerOpt,
    ForceOpt,
    JsonOpt,
    ManagementOpt,
    PeekLimitOpt,
    PeekOpt,
    QueueOpt,
    RegistryOpt,
    TimeoutOpt,
    emit_json,
    handle_errors,
    merged_flags,
    use_redactor,
)
from deploykit.config import CliFlags
from deploykit.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from deploykit.brokers.base import Broker
    from deploykit.manifest.model import Manifest
    from deploykit.scan.engine import OldBuilds, Report

FORMATS = ("text", "json", "github")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2}


def parse_size(text: str) -> int:
    """``1048576``, ``512k``, ``1m`` -> bytes."""
    value = text.strip().lower()
    number = value.rstrip("kmbi")
    unit = value[len(number) :]
    try:
        size = int(float(number) * _SIZE_UNITS[unit])
    except (ValueError, KeyError):
        raise UsageError(f"invalid size {text!r}: use bytes or a size like 512k, 1m") from None
    if size <= 0:
        raise UsageError(f"invalid size {text!r}: must be positive")
    return size


def pick_format(format_: str | None, json_: bool) -> str:
    import os

    if json_:
        return "json"
    if format_ is None:
        return "github" if os.environ.get("GITHUB_ACTIONS") == "true" else "text"
    if format_ not in FORMATS:
        raise UsageError(f"invalid --format {format_!r}: choose {', '.join(FORMATS)}")
    return format_


@dataclass(frozen=True)
class Compared:
    """What a scan compared, as its documents and notes name it."""

    new: str
    old: str | None
    broker: str | None


def scan_broker(
    flags: CliFlags,
    *,
    against: Path | None,
    old_manifest: Path | None,
    queues: list[str] | None,
    workers: bool,
    beat: bool,
    peek: bool,
    peek_limit: int,
    force: bool,
    oversize: int,
    new_manifest: Manifest | None = None,
    beat_schedule: bool = True,
    registry: Path | None = None,
) -> tuple[Report, Compared]:
    """Open the broker (and the fleet), run :func:`deploykit.scan.run.scan_waiting`; returns the
    report and what it compared, for the renderers.

    Shared by ``deploykit scan`` and ``deploykit check --broker`` (which judges the app's
    ``beat_schedule`` with its manifest rules: ``beat_schedule=False``).

    Stamped messages are judged against their build's manifest from the registry in
    ``registry`` (default ``$DEPLOYKIT_REGISTRY``), else in the broker; a broker with no place for
    it only means those builds are unknown (said in the output).
    """
    from deploykit.cli.common import open_session
    from deploykit.manifest.collect import snapshot
    from deploykit.manifest.model import read
    from deploykit.scan.run import PeekOptions, scan_waiting

    if peek_limit < 1:
        raise UsageError("--peek-limit must be at least 1")
    old = read(old_manifest) if old_manifest is not None else None
    new = read(against) if against is not None else new_manifest
    with open_session(flags, with_fleet=workers) as session:
        use_redactor(session.settings)
        if new is None:
            if session.app is None:
                raise UsageError(
                    "say what the new code is: -A/--app MODULE (the live app) or --against MANIFEST"
                )
            new = snapshot(None, app=session.app)

        def progress(count: int, elapsed: float) -> None:
            rate = count / elapsed if elapsed else 0.0
            sys.stderr.write(f"deploykit: scanned {count} messages ({rate:,.0f}/s)\n")

        with _registry_builds(session.broker, registry, new) as old_builds:
            report = scan_waiting(
                session.broker,
                new=new,
                old=old,
                app=session.app,
                queues=queues or (),
                fleet=session.fleet,
                control_exchange=session.control_exchange,
                include_beat=beat,
                beat_schedule=beat_schedule,
                peek=PeekOptions(peek_limit, force) if peek else None,
                oversize=oversize,
                progress=progress,
                old_builds=old_builds,
            )
        compared = Compared(
            new=f"manifest {against}" if against is not None else f"app {session.settings.app}",
            old=str(old_manifest) if old_manifest is not None else None,
            broker=session.settings.masked_broker_url,
        )
    return report, compared


@contextlib.contextmanager
def _registry_builds(broker: Broker, directory: Path | None, new: Manifest) -> Iterator[OldBuilds]:
    """The old side of stamped messages: the registry in ``directory`` (else
    ``$DEPLOYKIT_REGISTRY``), else the broker's; a broker with no place for one (or RabbitMQ
    without the management API) leaves every build unknown, and the output says why."""
    import os

    from deploykit.brokers.manifest_store import open_manifest_store
    from deploykit.registry import ManifestRegistry
    from deploykit.scan.run import registry_builds

    if directory is None and os.environ.get("DEPLOYKIT_REGISTRY"):
        directory = Path(os.environ["DEPLOYKIT_REGISTRY"])
    try:
        store = open_manifest_store(broker, directory=directory)
    except UsageError as exc:
        if directory is not None:
            raise
        yield registry_builds(None, new, problem=exc.message)
        return
    try:
        yield registry_builds(ManifestRegistry(store), new)
    finally:
        store.close()


@app.command()
def scan(
    ctx: typer.Context,
    against: Annotated[
        Path | None,
        typer.Option(
            "--against", metavar="MANIFEST", help="The new release's manifest (default: the live app, -A)."
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            metavar="PATH",
            help="The manifest of the code that produced the waiting messages (detects misbinding).",
        ),
    ] = None,
    queue: QueueOpt = None,
    no_workers: Annotated[bool, typer.Option("--no-workers", help="Skip tasks held by workers.")] = False,
    no_beat: Annotated[bool, typer.Option("--no-beat", help="Skip beat schedule entries.")] = False,
    peek: PeekOpt = False,
    peek_limit: PeekLimitOpt = 100,
    force: ForceOpt = False,
    registry: RegistryOpt = None,
    oversize: Annotated[
        str,
        typer.Option("--oversize", metavar="SIZE", help="Flag payloads larger than this (e.g. 512k, 1m)."),
    ] = "1m",
    format_: Annotated[
        str | None,
        typer.Option(
            "--format", metavar="FORMAT", help="text, json or github (default github under GitHub Actions)."
        ),
    ] = None,
    app_: AppOpt = None,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    timeout: TimeoutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Check every waiting message (queues, worker-held, ETA, beat) against the new code.

    Verdicts: runs, misbound, fails, discarded, undecidable. Exit 1 if any message or beat entry
    would fail, be discarded or misbind; else 5 if some waiting messages could not be read
    (RabbitMQ without --peek, beyond --peek-limit, a quorum queue without --force); else 0.
    """
    with handle_errors():
        fmt = pick_format(format_, json_)
        size = parse_size(oversize)
        flags = merged_flags(ctx, app_, broker, management_url, timeout)
        report, compared = scan_broker(
            flags,
            against=against,
            old_manifest=manifest,
            queues=queue,
            workers=not no_workers,
            beat=not no_beat,
            peek=peek,
            peek_limit=peek_limit,
            force=force,
            oversize=size,
            registry=registry,
        )
        render_scan(report, compared, fmt)
        raise typer.Exit(int(scan_exit_code(report)))


def scan_exit_code(report: Report) -> ExitCode:
    """1 if anything breaks, else 5 if some waiting messages were not checked, else 0."""
    if report.breaking:
        return ExitCode.UNSAFE
    return ExitCode.INCOMPLETE if report.incomplete else ExitCode.OK


def render_scan(report: Report, compared: Compared, fmt: str) -> None:
    from deploykit.output import scan as out

    if fmt == "json":
        emit_json(out.document(report, new=compared.new, old=compared.old, broker=compared.broker))
    elif fmt == "github":
        out.render_github(report, sys.stdout.write)
    else:
        from deploykit.output.text import console

        out.render_text(report, console())
