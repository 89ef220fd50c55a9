"""Waiting messages that are not stored broker messages, each as a stream of
:class:`~deploykit.scan.engine.Item`: worker-held tasks through remote control (their arguments
arrive already decoded), beat schedules from the app and from django-celery-beat's table.

Stored messages (queues, the ``unacked`` store) are judged page by page straight from the broker
interface by :func:`deploykit.scan.run.run_scan`, without an item per message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from deploykit.messages import NO_HEADERS, StoredHeaders
from deploykit.scan.decode import DecodedMessage, TaskCall, Undecodable, _shape_from_repr
from deploykit.scan.engine import Item


def _call_from_request(request: Mapping[str, Any]) -> DecodedMessage | Undecodable:
    task_id = request.get("id") if isinstance(request.get("id"), str) else None
    name = request.get("type") or request.get("name")
    if not isinstance(name, str):
        return Undecodable(task_id, None, "worker reported a task without a name", None)
    args, kwargs = request.get("args"), request.get("kwargs")
    try:
        if isinstance(args, str):
            args = _shape_from_repr(args, "args")
        if isinstance(kwargs, str):
            kwargs = _shape_from_repr(kwargs, "kwargs")
    except ValueError as exc:
        return Undecodable(task_id, name, f"worker reported unparseable arguments: {exc}", None)
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, Mapping):
        return Undecodable(task_id, name, "worker reported malformed arguments", None)
    return DecodedMessage(task_id, name, (TaskCall(name, tuple(args), dict(kwargs), source="worker"),), None)


def worker_items(replies: Mapping[str, Mapping[str, Any]], skip_ids: set[str]) -> Iterator[Item]:
    """Reserved and scheduled tasks from ``gather({'reserved', 'scheduled'})`` replies.

    Tasks already read from the broker (Redis ``unacked``) are skipped so none is counted twice.
    """
    for command in ("reserved", "scheduled"):
        for node, tasks in replies.get(command, {}).items():
            for entry in tasks if isinstance(tasks, list) else []:
                if not isinstance(entry, Mapping):
                    continue
                request = entry.get("request") if command == "scheduled" else entry
                if not isinstance(request, Mapping) or request.get("id") in skip_ids:
                    continue
                headers = StoredHeaders(
                    id=request.get("id"), eta=entry.get("eta") if command == "scheduled" else None
                )
                yield Item(f"worker:{node}", headers, None, _call_from_request(request))


def beat_items(app: Any) -> Iterator[Item]:
    """Entries of the app's ``beat_schedule``: each will be sent with these args at its next run."""
    schedule = getattr(app.conf, "beat_schedule", None) or {}
    for entry_name, entry in sorted(schedule.items()):
        if not isinstance(entry, Mapping):
            continue
        yield _beat_item(f"beat:{entry_name}", entry.get("task"), entry.get("args"), entry.get("kwargs"))


def _beat_item(location: str, task: Any, args: Any, kwargs: Any) -> Item:
    if not isinstance(task, str):
        undecodable = Undecodable(None, None, "beat entry without a task name", None)
        return Item(location, NO_HEADERS, None, undecodable)
    args = () if args is None else args
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, Mapping):
        return Item(
            location, NO_HEADERS, None, Undecodable(None, task, "beat entry with malformed args/kwargs", None)
        )
    call = TaskCall(task, tuple(args), dict(kwargs))
    return Item(location, NO_HEADERS, None, DecodedMessage(None, task, (call,), None))


def django_beat_items() -> tuple[list[Item], str | None]:
    """django-celery-beat ``PeriodicTask`` rows (args/kwargs are JSON text in the database).

    Returns the items and a note; nothing when django-celery-beat is not installed or configured.
    """
    import json

    try:
        from django.apps import apps
    except ImportError:
        return [], None
    if not apps.ready or not apps.is_installed("django_celery_beat"):
        return [], None
    try:
        model = apps.get_model("django_celery_beat", "PeriodicTask")
        rows = list(model.objects.filter(enabled=True).values_list("name", "task", "args", "kwargs"))
    except Exception as exc:  # database down, migrations missing: say so, don't crash the scan
        from deploykit.userapp import describe_exception

        # One line: a database driver's error spans lines (the server's whole answer, hints).
        return [], f"django-celery-beat rows not read: {describe_exception(exc, where=False)}"
    items = []
    for name, task, args_text, kwargs_text in rows:
        try:
            args = json.loads(args_text or "[]")
            kwargs = json.loads(kwargs_text or "{}")
        except ValueError:
            items.append(
                Item(
                    f"beat-db:{name}",
                    NO_HEADERS,
                    None,
                    Undecodable(None, task, "PeriodicTask args/kwargs are not valid JSON", None),
                )
            )
            continue
        items.append(_beat_item(f"beat-db:{name}", task, args, kwargs))
    return items, f"{len(items)} django-celery-beat periodic task(s) checked"
