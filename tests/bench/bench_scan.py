"""Benchmark: scanning a Redis queue of 1,000,000 realistic JSON task messages.

Measured in one run, on a private redis-server:

* the raw cost of just reading the messages with redis-py (pipelined LRANGE pages, no decoding);
* ``deploykit scan --against MANIFEST --json`` (a real subprocess, start-up included): throughput
  and peak RSS;

each the best of three interleaved runs, at 100k and at 1M messages, to show memory stays flat. Some messages
are ETA tasks in ``unacked`` (held by workers). Targets: >= 100,000 messages/s, within 3x of the
raw read, peak RSS < 200 MB and flat from 100k to 1M.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploykit.demo.processes import start_redis
from tests.bench.common import ROOT, write

SIZES = [int(n) for n in os.environ.get("BENCH_SCAN_SIZES", "100000,1000000").split(",")]
RUNS = 3
TASKS = {
    "shop.send_email": (["to", "subject", "body"], [("user@example.com", "Welcome", "Hello " * 20)], {}),
    "shop.charge": (["order_id", "amount", "currency"], [(123456, 99.95)], {"currency": "EUR"}),
    "shop.resize": (["image_id", "sizes"], [(987, [64, 128, 256, 1024])], {}),
    "shop.sync": (["account", "since", "full"], [("acc-1", "2026-11-01T00:00:00")], {"full": True}),
    "shop.old_report": (["account"], [("acc-2", "extra")], {}),  # fails against the manifest
}


def manifest(path: Path) -> None:
    """A minimal manifest (the schema the manifest module writes is read by the scan)."""
    tasks = {}
    for name, (params, _, _) in TASKS.items():
        tasks[name] = {
            "name": name,
            "module": "shop.tasks",
            "qualname": name.split(".")[1],
            "parameters": [
                {
                    "name": p,
                    "kind": "POSITIONAL_OR_KEYWORD",
                    "has_default": i > 1,
                    "default": None,
                    "annotation": None,
                }
                for i, p in enumerate(params)
            ],
        }
    path.write_text(json.dumps({"schema": 1, "tasks": tasks}))


def envelope(name: str, args: list, kwargs: dict, eta: str | None, queue: str = "celery") -> str:
    task_id = str(uuid.uuid4())
    body = base64.b64encode(
        json.dumps(
            [args, kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
        ).encode()
    ).decode()
    return json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": name,
                "id": task_id,
                "shadow": None,
                "eta": eta,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": repr(tuple(args)),
                "kwargsrepr": repr(kwargs),
                "origin": "gen1234@web-1",
                "ignore_result": False,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": str(uuid.uuid4()),
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def fill(client, total: int) -> None:
    """LPUSH ``total`` messages (as kombu does), 1% of them ETA tasks held in ``unacked``."""
    client.flushdb()
    # The binding a producer or worker declares (kombu Channel._queue_bind): how the scan finds the queue.
    client.sadd("_kombu.binding.celery", "celery\x06\x16\x06\x16celery")
    rng = random.Random(42)
    names = list(TASKS)
    templates = []
    for name in names:
        _, positional, kwargs = TASKS[name]
        for args in positional:
            templates.append(envelope(name, list(args), kwargs, None))
    pipe = client.pipeline(transaction=False)
    batch = []
    for i in range(total):
        template = templates[rng.randrange(len(templates))]
        batch.append(template.replace('"id": "', f'"id": "{i:08d}-', 1))
        if len(batch) == 5000:
            pipe.lpush("celery", *batch)
            pipe.execute()
            batch = []
    if batch:
        pipe.lpush("celery", *batch)
        pipe.execute()
    eta = "2026-12-01T00:00:00+00:00"
    for i in range(total // 100):
        name = names[i % len(names)]
        _, positional, kwargs = TASKS[name]
        raw = envelope(name, list(positional[0]), kwargs, eta)
        tag = str(uuid.uuid4())
        client.hset("unacked", tag, json.dumps([json.loads(raw), "", "celery"]))
        client.zadd("unacked_index", {tag: time.time()})


def raw_read(client, page: int = 1000) -> float:
    """Seconds to read every message with pipelined LRANGE pages (no decoding)."""
    started = time.perf_counter()
    length = client.llen("celery")
    count = 0
    for start in range(0, length, page * 8):
        pipe = client.pipeline(transaction=False)
        for offset in range(start, min(start + page * 8, length), page):
            pipe.lrange("celery", offset, offset + page - 1)
        for chunk in pipe.execute():
            count += len(chunk)
    cursor = 0
    while True:
        cursor, data = client.hscan("unacked", cursor, count=1000)
        count += len(data)
        if cursor == 0:
            break
    return time.perf_counter() - started


def run_scan(url: str, manifest_path: Path) -> tuple[float, int, dict]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploykit",
            "scan",
            "-b",
            url,
            "--against",
            str(manifest_path),
            "--json",
            "--no-workers",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("DEPLOYKIT_")},
    )
    stdout = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    document = json.loads(stdout) if stdout else {}
    return (
        elapsed,
        usage.ru_maxrss // 1024,
        {"exit_status": os.waitstatus_to_exitcode(status), **document.get("totals", {})},
    )


def main() -> None:
    import redis

    server = start_redis()
    client = redis.Redis(port=server.port)
    results = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            manifest_path = Path(folder) / "manifest.json"
            manifest(manifest_path)
            # The CLI's start-up and the scan's fixed costs: the same command on an empty queue.
            fill(client, 0)
            fixed_s = min(run_scan(server.url, manifest_path)[0] for _ in range(RUNS))
            for total in SIZES:
                fill(client, total)
                messages = total + total // 100
                # Best of RUNS for both, the runs interleaved: this machine's noise (other tenants)
                # only ever adds time, and comes in spells that should hit both sides alike.
                reads, scans = [], []
                for _ in range(RUNS):
                    reads.append(raw_read(client))
                    scans.append(run_scan(server.url, manifest_path))
                read_s = min(reads)
                scan_s = min(elapsed for elapsed, _, _ in scans)
                rss_mb = max(rss for _, rss, _ in scans)
                totals = scans[0][2]
                results.append(
                    {
                        "messages": messages,
                        "raw_read_s": round(read_s, 2),
                        "raw_read_msgs_per_s": round(messages / read_s),
                        "scan_s": round(scan_s, 2),
                        "scan_msgs_per_s": round(messages / scan_s),
                        "scan_vs_raw": round(scan_s / read_s, 2),
                        "scan_without_startup_vs_raw": round((scan_s - fixed_s) / read_s, 2),
                        "scan_peak_rss_mb": rss_mb,
                        "verdicts": totals,
                    }
                )
                print(results[-1], flush=True)
    finally:
        server.stop()
    write(
        "scan",
        {
            "queue": "one Redis list + 1% ETA tasks in unacked; 5 task types, JSON, base64 bodies",
            "method": f"best of {RUNS} runs each; scan time includes the CLI's start-up",
            "startup_s": round(fixed_s, 2),
            "runs": results,
            "targets": {"msgs_per_s_min": 100_000, "scan_vs_raw_max": 3, "peak_rss_mb_max": 200},
        },
    )


if __name__ == "__main__":
    main()
