"""Ground truth for the real-project corpus, collected WITHOUT deploykit.

Run with the application's own interpreter (its venv); it imports nothing from deploykit.

    python collect_truth.py OUT.json tasks APP
    python collect_truth.py OUT.json bind APP CALLS.json
    python collect_truth.py OUT.json publish APP CALLS.json   (sends the calls with send_task)

The result goes to OUT.json (applications print on stdout while they load).

`tasks`: loads the app as `celery worker` does (import the app module, the loader's default
modules: this is where Celery's Django fix-up runs django.setup() and autodiscovery imports the
tasks modules; then finalize), then records, for every registered task except Celery's built-ins,
plain `inspect.signature(task.run)` (bound tasks: the bound method, so `self` is dropped), the
queue the app's router sends it to, and the queues the app declares.

`bind`: for each call {task, args, kwargs}, whether `inspect.signature(new.run).bind(...)`
accepts it, and which parameter each positional value lands on.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from typing import Any


def load_app(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, attr or "app")
    # What `celery worker` does before consuming: WorkController.setup_instance ->
    # app.loader.init_worker() -> import_default_modules() (sends import_modules: Django
    # fix-up's django.setup(), autodiscover_tasks) and then the app is finalized.
    app.loader.import_default_modules()
    app.finalize(auto=True)
    return app


def _queue_name(queue: Any) -> str | None:
    if queue is None:
        return None
    return queue if isinstance(queue, str) else getattr(queue, "name", None)


def tasks(app: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in sorted(app.tasks):
        if name.startswith("celery."):
            continue
        task = app.tasks[name]
        try:
            signature = inspect.signature(task.run)
        except (TypeError, ValueError) as exc:
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        try:
            route = app.amqp.router.route({}, name)
            queue = _queue_name(route.get("queue"))
        except Exception as exc:  # recorded, not hidden
            queue = f"!{type(exc).__name__}"
        result[name] = {
            "parameters": [
                {
                    "name": p.name,
                    "kind": p.kind.name,
                    "has_default": p.default is not inspect.Parameter.empty,
                }
                for p in signature.parameters.values()
            ],
            "queue": queue,
        }
    return result


def declared_queues(app: Any) -> list[str]:
    conf = app.conf
    names = {conf.task_default_queue}
    for queue in conf.task_queues or ():
        names.add(_queue_name(queue))
    return sorted(n for n in names if n)


def bind(app: Any, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for call in calls:
        task = app.tasks.get(call["task"])
        if task is None:
            out.append({"verdict": "discarded", "positional": None})
            continue
        signature = inspect.signature(task.run)
        try:
            bound = signature.bind(*call["args"], **call["kwargs"])
        except TypeError as exc:
            out.append({"verdict": "fails", "error": str(exc), "positional": None})
            continue
        # Which parameter each positional value lands on (positional parameters in order, the
        # rest into *args): what misbinding is about.
        slots = [
            p.name
            for p in signature.parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        positional = [slots[i] if i < len(slots) else "*" for i in range(len(call["args"]))]
        del bound
        out.append({"verdict": "binds", "positional": positional})
    return out


def publish(app: Any, calls: list[dict[str, Any]]) -> list[str]:
    ids = []
    with app.connection_for_write() as connection:
        for call in calls:
            result = app.send_task(
                call["task"], args=call["args"], kwargs=call["kwargs"], connection=connection
            )
            ids.append(result.id)
    return ids


def main(argv: list[str]) -> int:
    out_path, command, spec = argv[0], argv[1], argv[2]
    app = load_app(spec)
    if command == "tasks":
        payload: Any = {"tasks": tasks(app), "declared_queues": declared_queues(app)}
    elif command == "bind":
        with open(argv[3], encoding="utf-8") as fp:
            payload = bind(app, json.load(fp))
    elif command == "publish":
        with open(argv[3], encoding="utf-8") as fp:
            payload = publish(app, json.load(fp))
    else:
        raise SystemExit(f"unknown command {command}")
    with open(out_path, "w", encoding="utf-8") as fp:
        json.dump(payload, fp, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
