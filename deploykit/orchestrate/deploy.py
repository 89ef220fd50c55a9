"""``deploy``: the one-shot release step, a thin composition of the other machines.

::

    DRAIN ──► SHUTDOWN ──► RUN (the deploy command) ──► WAIT_NEW ──► DONE
      │           │             │                          │
      ▼           ▼             ▼                          ▼
    (drain's    TIMEOUT       FAILED (old workers are    TIMEOUT / FAILED (wrong tasks)
     outcome,                 stopped: say so)
     rolled back)

Stop-the-world: every selected worker is drained and shut down warmly (their held messages back in
the broker, where the new release picks them up), then the deploy command runs, then deploykit
waits until as many workers as it stopped answer again (with ``expected_tasks``: registering the
new code's tasks; with ``expected_build``: advertising the new build; a stopped worker that comes
back on another build fails the deploy, other workers on other builds are not counted). The
record of the drain is then cleared: the new processes consume their own queues.
Run ``deploykit check`` before it to gate on signature changes.
"""

from __future__ import annotations

import enum
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from deploykit.brokers.base import Broker
from deploykit.brokers.records import RecordStore
from deploykit.errors import DeploykitError, ExitCode
from deploykit.fleet.base import Fleet
from deploykit.fleet.replies import worker_build
from deploykit.orchestrate.common import (
    Clockwork,
    Progress,
    ProgressCallback,
    Timing,
    build_mismatch,
    matches,
    no_progress,
    select_workers,
)
from deploykit.orchestrate.drain import DrainMachine, DrainOptions, DrainResult
from deploykit.orchestrate.restart import task_mismatch
from deploykit.orchestrate.shutdown import ShutdownMachine, ShutdownOptions, ShutdownResult


class DeployState(str, enum.Enum):
    DRAIN = "drain"
    SHUTDOWN = "shutdown"
    RUN = "run"
    WAIT_NEW = "wait-new"
    DONE = "done"
    FAILED = "failed"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    UNAVAILABLE = "unavailable"
    INTERRUPTED = "interrupted"


TERMINAL = {
    DeployState.DONE: ExitCode.OK,
    DeployState.FAILED: ExitCode.UNSAFE,
    DeployState.TIMEOUT: ExitCode.TIMEOUT,
    DeployState.REFUSED: ExitCode.REFUSED,
    DeployState.UNAVAILABLE: ExitCode.UNAVAILABLE,
    DeployState.INTERRUPTED: ExitCode.INTERRUPTED,
}


@dataclass(frozen=True)
class DeployOptions:
    command: tuple[str, ...]
    workers: tuple[str, ...] = ()
    #: Only the workers advertising one of these builds are drained and stopped; empty = any build.
    builds: tuple[str, ...] = ()
    drain_timeout: float | None = 600.0
    shutdown_timeout: float | None = 120.0
    command_timeout: float = 1800.0
    wait_timeout: float = 300.0
    #: Workers that must answer afterwards (default: as many as were stopped).
    expect_workers: int | None = None
    expected_tasks: frozenset[str] | None = None
    #: The build the new workers must advertise to count (``--expect-build``).
    expected_build: str | None = None
    wait_eta: bool = False
    #: Seconds between the warm shutdown being confirmed and the command: a worker's mailbox
    #: closes as its shutdown begins, the process itself exits a moment later.
    settle: float = 2.0
    control_exchange: str = "celery"


@dataclass
class DeployResult:
    status: str
    exit_code: int
    message: str
    stopped: tuple[str, ...] = ()
    new_workers: tuple[str, ...] = ()
    drain: DrainResult | None = None
    shutdown: ShutdownResult | None = None
    command: tuple[str, ...] = ()
    command_exit: int | None = None
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)


class DeployMachine:
    def __init__(
        self,
        fleet: Fleet,
        broker: Broker,
        records: RecordStore,
        options: DeployOptions,
        *,
        timing: Timing | None = None,
        progress: ProgressCallback = no_progress,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    ) -> None:
        self.fleet = fleet
        self.broker = broker
        self.records = records
        self.options = options
        self.timing = timing or Timing()
        self.progress = progress
        self._run = run
        self.state = DeployState.DRAIN
        self.clock = Clockwork(self.timing, None)
        self.result_ = DeployResult("running", 0, "", command=options.command)
        self._drain = DrainMachine(
            fleet,
            broker,
            records,
            DrainOptions(
                workers=options.workers,
                builds=options.builds,
                timeout=options.drain_timeout,
                wait_eta=options.wait_eta,
                rollback_on_timeout=True,
                control_exchange=options.control_exchange,
            ),
            timing=self.timing,
            progress=progress,
        )
        self._wait_started = 0.0

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def run(self) -> DeployResult:
        try:
            while not self.done:
                self.step()
        except KeyboardInterrupt:
            where = self.state.value
            if self.state is DeployState.DRAIN:
                self._drain.interrupt()
                self.result_.drain = self._drain.result()
            self._end(DeployState.INTERRUPTED, f"interrupted during {where}")
        self.result_.elapsed = round(self.clock.elapsed, 3)
        return self.result_

    def _end(self, state: DeployState, message: str) -> None:
        self.state = state
        self.result_.status = state.value
        self.result_.exit_code = int(TERMINAL[state])
        self.result_.message = message

    def step(self) -> DeployState:
        handler = {
            DeployState.DRAIN: self._step_drain,
            DeployState.SHUTDOWN: self._step_shutdown,
            DeployState.RUN: self._step_run,
            DeployState.WAIT_NEW: self._step_wait,
        }.get(self.state)
        if handler is not None:
            handler()
        return self.state

    def _step_drain(self) -> None:
        self._drain.step()
        if not self._drain.done:
            return
        outcome = self._drain.result()
        self.result_.drain = outcome
        if outcome.status != "drained":
            state = (
                DeployState(outcome.status)
                if outcome.status in DeployState._value2member_map_
                else DeployState.FAILED
            )
            self._end(state, f"drain {outcome.status}: {outcome.message}; nothing was deployed")
            return
        self.state = DeployState.SHUTDOWN

    def _step_shutdown(self) -> None:
        workers = self._drain.selected
        outcome = ShutdownMachine(
            self.fleet,
            self.broker,
            ShutdownOptions(
                workers=tuple(workers),
                timeout=self.options.shutdown_timeout,
                control_exchange=self.options.control_exchange,
                exact=True,
            ),
            timing=self.timing,
            progress=self.progress,
            records=self.records,
        ).run()
        self.result_.shutdown = outcome
        self.result_.stopped = tuple(w.worker for w in outcome.workers if w.gone)
        if outcome.status == "interrupted":
            raise KeyboardInterrupt
        if outcome.status != "done":
            self._end(
                DeployState.TIMEOUT,
                f"warm shutdown {outcome.status}: {outcome.message}; nothing was deployed",
            )
            return
        self.state = DeployState.RUN

    def _step_run(self) -> None:
        argv = list(self.options.command)
        try:
            done = self._run(
                argv, capture_output=True, text=True, timeout=self.options.command_timeout, check=False
            )
        except FileNotFoundError:
            self._end(DeployState.FAILED, f"deploy command not found: {argv[0]}; the old workers are stopped")
            return
        except subprocess.TimeoutExpired:
            self._end(
                DeployState.TIMEOUT,
                f"deploy command still running after {self.options.command_timeout:g}s; "
                "the old workers are stopped",
            )
            return
        self.result_.command_exit = done.returncode
        if done.returncode != 0:
            tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
            self._end(
                DeployState.FAILED,
                f"deploy command exited {done.returncode}"
                + (f" ({' / '.join(tail)})" if tail else "")
                + "; the old workers are stopped and their work is back in the broker",
            )
            return
        self._wait_started = self.timing.clock()
        self.state = DeployState.WAIT_NEW

    def _step_wait(self) -> None:
        expected = self.options.expect_workers or len(self.result_.stopped) or 1
        _, online = select_workers(
            self.fleet, self.broker, self.options.workers, self.options.control_exchange
        )
        online = [n for n in online if matches(n, self.options.workers)]
        if self.options.builds:  # workers of other builds the drain left alone are not new workers
            bystanders = set(self._drain.online) - set(self._drain.selected)
            online = [n for n in online if n not in bystanders]
        elapsed = self.timing.clock() - self._wait_started
        ready = online
        commands: dict[str, dict[str, Any]] = {}
        if self.options.expected_tasks is not None:
            commands["registered"] = {}
        if self.options.expected_build is not None:
            commands["stats"] = {}
        other_builds: list[str] = []
        if online and commands:
            replies = self.fleet.gather(commands, online)
            ready = []
            for node in online:
                if self.options.expected_build is not None:
                    if node not in replies.by_command.get("stats", {}):
                        continue  # no answer yet: not counted, asked again next tick
                    advertised = worker_build(replies.get("stats", node))
                    wrong = build_mismatch(advertised, self.options.expected_build)
                    if wrong and node in self.result_.stopped:
                        self._end(
                            DeployState.FAILED,
                            f"{node} came back on the wrong build: {wrong}; it is not counted as back",
                        )
                        return
                    if wrong:  # a worker this deploy did not stop (another build): not counted
                        other_builds.append(node)
                        continue
                if self.options.expected_tasks is None:
                    ready.append(node)
                    continue
                problem = task_mismatch(replies.get("registered", node), self.options.expected_tasks)
                if problem is None:
                    ready.append(node)
                elif node in replies.by_command.get("registered", {}):
                    self._end(
                        DeployState.FAILED, f"{node} is running other code than the manifest: {problem}"
                    )
                    return
        self.progress(
            Progress("wait-new", max(expected - len(ready), 0), elapsed, expected, "worker(s) to come up")
        )
        if len(ready) >= expected:
            self.result_.new_workers = tuple(ready)
            try:
                self.records.remove(self._drain.cancelled)
            except DeploykitError:  # housekeeping only; `resume --forget-missing` tidies up
                self.result_.notes.append("could not tidy the deploykit record")
            self._end(
                DeployState.DONE,
                f"deployed: {len(self.result_.stopped)} worker(s) stopped, {len(ready)} answering after "
                f"{self.clock.elapsed:.1f}s",
            )
            return
        if elapsed >= self.options.wait_timeout:
            on_build = f" on build {self.options.expected_build!r}" if self.options.expected_build else ""
            others = f" ({', '.join(other_builds)} run other builds)" if other_builds else ""
            self._end(
                DeployState.TIMEOUT,
                f"only {len(ready)} of {expected} worker(s) answer{on_build} "
                f"{self.options.wait_timeout:g}s after the deploy{others}",
            )
            return
        self.timing.sleep(max(self.timing.tick, 0.5))


def parse_command(text: str) -> tuple[str, ...]:
    from deploykit.errors import UsageError

    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"--run: cannot parse the command: {exc}") from None
    if not argv:
        raise UsageError("--run: empty command")
    return argv


__all__: Sequence[str] = ("DeployMachine", "DeployOptions", "DeployResult", "DeployState", "parse_command")
