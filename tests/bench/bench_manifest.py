"""Benchmark: ``deploykit manifest snapshot`` and ``deploykit check`` on generated apps.

For apps of 500, 1,000 and 2,000 tasks (20 task modules, varied signatures: defaults, keyword-only,
``*args``/``**kwargs``, ``bind=True``, annotations, ``task_routes``, a beat schedule), measured as
real subprocesses in the project folder:

* ``import``: a Python process that imports the app like a worker would (``load_app``,
  ``import_default_modules()``, ``app.tasks``) and nothing else: the floor;
* ``snapshot``: ``deploykit manifest snapshot -o FILE``;
* ``check``: ``deploykit check --json`` against release 1's manifest while the code is release 2
  (every 10th task changed: ~10% of tasks with findings, so rendering is included).

Target: snapshot and check each add < 1 s on top of the import at 2,000 tasks, and scale linearly.
Also records the in-process cost of collect, serialise and diff. Results:
``tests/bench/results/manifest.json``. Run: ``.venv/bin/python tests/bench/bench_manifest.py``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import write

SIZES = [int(n) for n in os.environ.get("BENCH_MANIFEST_SIZES", "500,1000,2000").split(",")]
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
MODULES = 20
IMPORT_ONLY = (
    "from deploykit.userapp import load_app; app = load_app('benchapp'); "
    "app.loader.import_default_modules(); len(app.tasks)"
)


def _task_source(index: int, release: int) -> str:
    changed = release == 2 and index % 10 == 0
    shape = index % 6
    if shape == 0:
        params = "order_id, amount, currency='EUR'" if not changed else "order_id, currency, amount"
        head = "@app.task"
    elif shape == 1:
        params = "self, account: str, since: str | None = None, *, full: bool = False"
        head = "@app.task(bind=True, max_retries=5)"
        if changed:
            params = "self, account: str, since: str | None = None, *, full: bool"
    elif shape == 2:
        params = "image_id, *sizes, **options" if not changed else "image_id, *sizes"
        head = "@app.task(acks_late=True)"
    elif shape == 3:
        params = "to, subject, body, /" if not changed else "to, subject, body, cc=None, /"
        head = "@app.task(ignore_result=True)"
    elif shape == 4:
        params = (
            "user_id, *, notify=True, reason='none'"
            if not changed
            else "user_id, *, notify=False, why='none'"
        )
        head = "@app.task"
    else:
        params = "batch: list[int], size: int = 100" if not changed else "batch: list[int], chunk: int = 100"
        head = "@app.task(time_limit=300, soft_time_limit=240)"
    return f"{head}\ndef task_{index}({params}):\n    return None\n\n"


def generate(folder: Path, size: int, release: int) -> None:
    package = folder / "benchapp"
    package.mkdir(parents=True)
    (folder / "pyproject.toml").write_text('[tool.deploykit]\napp = "benchapp"\n')
    modules = [f"benchapp.tasks_{m:02d}" for m in range(MODULES)]
    routes = {f"benchapp.tasks_{m:02d}.*": {"queue": f"q{m % 4}"} for m in range(0, MODULES, 3)}
    beat = {
        f"beat-{i}": {"task": f"benchapp.tasks_{i % MODULES:02d}.task_{i}", "schedule": 60.0, "args": (i, i)}
        for i in range(0, size, 20)
        if i % 6 == 0
    }
    (package / "__init__.py").write_text("")
    (package / "celery.py").write_text(
        "from celery import Celery\n\n"
        f"app = Celery('benchapp', broker='memory://', include={modules!r})\n"
        f"app.conf.task_routes = {routes!r}\n"
        f"app.conf.beat_schedule = {beat!r}\n"
    )
    for m, module in enumerate(modules):
        body = ["from benchapp.celery import app\n\n\n"]
        body += [_task_source(i, release) for i in range(m, size, MODULES)]
        (folder / (module.replace(".", "/") + ".py")).write_text("".join(body))


def timed(argv: list[str], cwd: Path, expect: set[int]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYKIT_", "GITHUB_"))}
    env["NO_COLOR"] = "1"
    samples = []
    for i in range(RUNS + 1):
        started = time.perf_counter()
        result = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - started
        if result.returncode not in expect:
            raise SystemExit(f"{argv} exited {result.returncode}: {result.stderr.decode()[-2000:]}")
        if i:  # the first run warms the page cache and writes __pycache__
            samples.append(elapsed)
    return {"median_s": round(statistics.median(samples), 4), "min_s": round(min(samples), 4), "runs": RUNS}


def in_process(folder_v1: Path, folder_v2: Path) -> dict[str, float]:
    """Collect/serialise/diff without process start-up (fresh interpreter, so imports are real)."""
    code = (
        "import json, os, sys, time\n"
        "from pathlib import Path\n"
        "from deploykit.userapp import load_app\n"
        "from deploykit.manifest import collect, model\n"
        "from deploykit.manifest.check import compare\n"
        "app = load_app('benchapp'); collect.import_task_modules(app); len(app.tasks)\n"
        "t0 = time.perf_counter(); new = collect.collect_app(app, Path.cwd()); t1 = time.perf_counter()\n"
        "text = model.dumps(new); t2 = time.perf_counter()\n"
        "old = model.read(Path(sys.argv[1])); t3 = time.perf_counter()\n"
        "report = compare(old, new, command='check', old_label='a', new_label='b')\n"
        "t4 = time.perf_counter()\n"
        "print(json.dumps({'collect_s': t1 - t0, 'dumps_s': t2 - t1, 'read_s': t3 - t2, 'diff_s': t4 - t3,\n"
        "                  'findings': len(report.findings), 'manifest_bytes': len(text)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(folder_v1 / "deploykit.manifest.json")],
        cwd=folder_v2,
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    values = json.loads(result.stdout)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            v1, v2 = Path(tmp) / f"v1-{size}", Path(tmp) / f"v2-{size}"
            generate(v1, size, 1)
            generate(v2, size, 2)
            python = [sys.executable]
            imported = timed([*python, "-c", IMPORT_ONLY], v1, {0})
            snapshot = timed(
                [*python, "-m", "deploykit", "manifest", "snapshot", "-o", "deploykit.manifest.json"], v1, {0}
            )
            (v2 / "deploykit.manifest.json").write_bytes((v1 / "deploykit.manifest.json").read_bytes())
            check = timed([*python, "-m", "deploykit", "check", "--json"], v2, {1})
            breakdown = in_process(v1, v2)
            row = {
                "tasks": size,
                "import": imported,
                "snapshot": snapshot,
                "check": check,
                "snapshot_added_s": round(snapshot["median_s"] - imported["median_s"], 4),
                "check_added_s": round(check["median_s"] - imported["median_s"], 4),
                "in_process": breakdown,
            }
            rows.append(row)
            print(
                f"{size:>5} tasks: import {imported['median_s']:.3f}s, "
                f"snapshot +{row['snapshot_added_s']:.3f}s, "
                f"check +{row['check_added_s']:.3f}s ({breakdown['findings']} findings)",
                file=sys.stderr,
            )
    largest = rows[-1]
    per_task_ms = {
        str(r["tasks"]): round(
            1000 * (r["in_process"]["collect_s"] + r["in_process"]["diff_s"]) / r["tasks"], 4
        )
        for r in rows
    }
    write(
        "manifest",
        {
            "benchmark": "manifest snapshot / check on generated apps",
            "target": "snapshot and check each add < 1 s on top of importing the app (2,000 tasks); linear",
            "results": rows,
            "collect_plus_diff_ms_per_task": per_task_ms,
            "met": largest["snapshot_added_s"] < 1.0 and largest["check_added_s"] < 1.0,
        },
    )


if __name__ == "__main__":
    main()
