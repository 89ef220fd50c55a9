"""Text results of ``drain``, ``resume``, ``shutdown``, ``restart`` and ``deploy``.

Each renderer writes plain lines through ``write`` (the CLI's, which scrubs secrets). The first
line is ``status: message``, unless the command failed: the CLI then says it once, as the error
line on stderr. Their ``--json`` documents are in :mod:`deploykit.output.documents`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deploykit.orchestrate.deploy import DeployResult
    from deploykit.orchestrate.drain import DrainResult
    from deploykit.orchestrate.restart import RestartResult
    from deploykit.orchestrate.resume import ResumeResult
    from deploykit.orchestrate.shutdown import ShutdownResult

Write = Callable[[str], None]

#: Held ETA tasks listed one per line after a drain; the rest are in ``--json``.
HELD_ETA_SHOWN = 20


def _headline(
    result: DrainResult | ResumeResult | ShutdownResult | RestartResult | DeployResult, write: Write
) -> None:
    if not result.exit_code:
        write(f"{result.status}: {result.message}")


def render_drain(result: DrainResult, write: Write) -> None:
    _headline(result, write)
    if result.cancelled:
        write("cancelled consumers: " + ", ".join(f"{c.queue} on {c.worker}" for c in result.cancelled))
    if result.rolled_back:
        write("rolled back: the consumers above were re-added")
    for ref in result.not_restored:
        write(f"NOT re-added (kept in the record, run `deploykit resume`): {ref.queue} on {ref.worker}")
    if result.lost_workers:
        write("lost workers: " + ", ".join(result.lost_workers))
    if result.held_eta:
        write(f"{len(result.held_eta)} ETA task(s) held by the drained workers:")
        for task in result.held_eta[:HELD_ETA_SHOWN]:
            eta = task.eta.isoformat() if task.eta else "?"
            write(f"  {task.id}  {task.name}  eta {eta}  on {task.worker}")
        if len(result.held_eta) > HELD_ETA_SHOWN:
            write(f"  … and {len(result.held_eta) - HELD_ETA_SHOWN} more (see --json)")
        write(result.eta_fate)
    for note in result.notes:
        write(f"note: {note}")


def render_resume(result: ResumeResult, write: Write) -> None:
    _headline(result, write)
    for ref in result.restored:
        write(f"  re-added {ref.queue} on {ref.worker}")
    for ref in result.not_restored:
        write(f"  kept in the record: {ref.queue} on {ref.worker}")


def render_shutdown(result: ShutdownResult, write: Write) -> None:
    _headline(result, write)
    for w in result.workers:
        write(
            f"  {w.worker} (pid {w.pid}): {w.active} running finished, "
            f"{w.reserved} reserved + {w.scheduled} ETA handed back"
            + ("" if w.gone else " — STILL ANSWERING")
        )
    if result.returned is not None:
        verified = f"verified by the {result.verified_by}" if result.verified else "not verified"
        write(f"  {result.returned}/{result.held} held message(s) back in the broker ({verified})")
    for note in result.notes:
        write(f"note: {note}")


def render_restart(result: RestartResult, write: Write) -> None:
    _headline(result, write)
    for b in result.batches:
        write(f"  batch {b.index + 1}: {b.status}" + (f" — {b.error}" if b.error else ""))
        for r in b.restarts:
            back = f", back after {r.back_after:.1f}s (pid {r.new_pid})" if r.back_after is not None else ""
            write(f"    {r.worker} (pid {r.old_pid}) → {r.target}{back}")


def render_deploy(result: DeployResult, write: Write) -> None:
    _headline(result, write)
    if result.stopped:
        write("  stopped: " + ", ".join(result.stopped))
    if result.new_workers:
        write("  answering: " + ", ".join(result.new_workers))
