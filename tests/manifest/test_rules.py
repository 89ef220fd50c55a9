"""The diff rules as one table: (old source, new source, expected findings).

Each source is executed into a fresh Celery app and snapshotted by the real collector, so the
table exercises signature extraction (wraps, bind=True, class-based tasks, ``/``) as well as the
rules. Expected findings are ``"RULE:level"`` (``":suppressed"`` appended when suppressed); an
empty list means the change must stay quiet.
"""

from __future__ import annotations

import pytest

from deploykit.manifest.check import compare
from deploykit.manifest.rules import RULES
from deploykit.manifest.suppress import parse_ignore

BASE = """
@app.task
def add(x, y):
    pass
"""

CASES: list[tuple[str, str, str, list[str]]] = [
    # --- compatible changes: quiet ---------------------------------------------------------
    ("identical", BASE, BASE, []),
    (
        "body-only change",
        BASE,
        "@app.task\ndef add(x, y):\n    return x + y\n",
        [],
    ),
    (
        "optional kw-only param absorbed by old **kwargs",
        "@app.task\ndef add(x, y, **kw):\n    pass\n",
        "@app.task\ndef add(x, y, *, z=0, **kw):\n    pass\n",
        [],
    ),
    (
        "removed param swallowed by *args and **kwargs",
        "@app.task\ndef add(x, y, z=1, *args, **kw):\n    pass\n",
        "@app.task\ndef add(x, y, *args, **kw):\n    pass\n",
        [],
    ),
    (
        "removed keyword-only param swallowed by **kwargs",
        "@app.task\ndef add(x, *, z=1, **kw):\n    pass\n",
        "@app.task\ndef add(x, **kw):\n    pass\n",
        [],
    ),
    (
        "positional-only -> positional-or-keyword",
        "@app.task\ndef add(x, y, /):\n    pass\n",
        BASE,
        [],
    ),
    (
        "keyword-only -> positional-or-keyword (at the end)",
        "@app.task\ndef add(x, *, y):\n    pass\n",
        BASE,
        [],
    ),
    (
        "positional-only parameter renamed",
        "@app.task\ndef add(x, y, /):\n    pass\n",
        "@app.task\ndef add(x, total, /):\n    pass\n",
        [],
    ),
    (
        "keyword-only parameters reordered",
        "@app.task\ndef add(x, *, a=1, b=2):\n    pass\n",
        "@app.task\ndef add(x, *, b=2, a=1):\n    pass\n",
        [],
    ),
    (
        "bind=True adds self (dropped from the signature)",
        BASE,
        "@app.task(bind=True)\ndef add(self, x, y):\n    pass\n",
        [],
    ),
    (
        "functools.wraps decorator added (followed to the real signature)",
        BASE,
        "import functools\n"
        "def logged(f):\n"
        "    @functools.wraps(f)\n"
        "    def inner(*a, **k):\n"
        "        return f(*a, **k)\n"
        "    return inner\n"
        "@app.task\n@logged\ndef add(x, y):\n    pass\n",
        [],
    ),
    (
        "annotations added",
        BASE,
        "@app.task\ndef add(x: int, y: int) -> int:\n    return x + y\n",
        [],
    ),
    (
        "default whose repr holds a memory address",
        "SENTINEL = object()\n@app.task\ndef add(x, y=SENTINEL):\n    pass\n",
        "SENTINEL = object()\n@app.task\ndef add(x, y=SENTINEL):\n    pass\n",
        [],
    ),
    (
        "*args and **kwargs added",
        BASE,
        "@app.task\ndef add(x, y, *args, **kwargs):\n    pass\n",
        [],
    ),
    (
        "unchanged beat entry for a task of another service",
        BASE + "app.conf.beat_schedule = {'e': {'task': 'other.t', 'schedule': 5.0}}\n",
        BASE + "app.conf.beat_schedule = {'e': {'task': 'other.t', 'schedule': 5.0}}\n",
        [],
    ),
    # --- task level ------------------------------------------------------------------------------
    ("task removed", BASE + "@app.task\ndef gone():\n    pass\n", BASE, ["TASK_REMOVED:error"]),
    ("task added", BASE, BASE + "@app.task\ndef new():\n    pass\n", ["TASK_ADDED:info"]),
    (
        "task renamed with name=",
        BASE,
        "@app.task(name='math.add')\ndef add(x, y):\n    pass\n",
        ["TASK_RENAMED:error"],
    ),
    (
        "function renamed in place",
        BASE,
        "\n@app.task\ndef add_numbers(x, y):\n    pass\n",
        ["TASK_RENAMED:error"],
    ),
    (
        "route changed through task_routes",
        BASE,
        "app.conf.task_routes = {'proj.tasks.add': {'queue': 'math'}}\n" + BASE,
        ["ROUTE_CHANGED:warning"],
    ),
    (
        "serializer changed",
        BASE,
        "@app.task(serializer='pickle')\ndef add(x, y):\n    pass\n",
        ["SERIALIZER_CHANGED:warning"],
    ),
    (
        "acks_late changed",
        BASE,
        "@app.task(acks_late=True)\ndef add(x, y):\n    pass\n",
        ["OPTION_CHANGED:info"],
    ),
    # --- parameters -----------------------------------------------------------------------------
    (
        "optional parameter added at the end",
        BASE,
        "@app.task\ndef add(x, y, z=0):\n    pass\n",
        ["PARAM_ADDED_OPTIONAL:warning"],
    ),
    (
        "required parameter added",
        BASE,
        "@app.task\ndef add(x, y, z):\n    pass\n",
        ["PARAM_ADDED_REQUIRED:error"],
    ),
    (
        "parameter removed",
        BASE,
        "@app.task\ndef add(x):\n    pass\n",
        ["PARAM_REMOVED:error"],
    ),
    (
        "parameter removed, only **kwargs left (positional callers break)",
        BASE,
        "@app.task\ndef add(x, **kw):\n    pass\n",
        ["PARAM_REMOVED:error"],
    ),
    (
        "middle parameter removed: the next one moves",
        "@app.task\ndef add(x, y, z):\n    pass\n",
        "@app.task\ndef add(x, z):\n    pass\n",
        ["PARAM_REMOVED:error", "PARAM_MOVED:error"],
    ),
    (
        "parameter renamed (one finding, not removed + added)",
        BASE,
        "@app.task\ndef add(x, total):\n    pass\n",
        ["PARAM_RENAMED:error"],
    ),
    (
        "renamed and lost its default",
        "@app.task\ndef add(x, y=1):\n    pass\n",
        "@app.task\ndef add(x, total):\n    pass\n",
        ["PARAM_RENAMED:error", "PARAM_BECAME_REQUIRED:error"],
    ),
    (
        "keyword-only parameter renamed",
        "@app.task\ndef add(x, *, mode='a'):\n    pass\n",
        "@app.task\ndef add(x, *, style='a'):\n    pass\n",
        ["PARAM_RENAMED:error"],
    ),
    (
        "positional parameters reordered (silent misbinding)",
        BASE,
        "@app.task\ndef add(y, x):\n    pass\n",
        ["PARAM_MOVED:error", "PARAM_MOVED:error"],
    ),
    (
        "optional parameter inserted in the middle",
        BASE,
        "@app.task\ndef add(x, z=0, y=None):\n    pass\n",
        ["PARAM_MOVED:error", "PARAM_ADDED_OPTIONAL:warning", "PARAM_BECAME_OPTIONAL:info"],
    ),
    (
        "default removed",
        "@app.task\ndef add(x, y=1):\n    pass\n",
        BASE,
        ["PARAM_BECAME_REQUIRED:error"],
    ),
    (
        "positional-or-keyword -> keyword-only is NOT compatible for positional callers",
        BASE,
        "@app.task\ndef add(x, *, y):\n    pass\n",
        ["PARAM_KIND_CHANGED:error"],
    ),
    (
        "positional-or-keyword -> positional-only breaks keyword callers",
        BASE,
        "@app.task\ndef add(x, y, /):\n    pass\n",
        ["PARAM_KIND_CHANGED:error", "PARAM_KIND_CHANGED:error"],
    ),
    (
        "keyword-only -> positional-only",
        "@app.task\ndef add(x, *, y):\n    pass\n",
        "@app.task\ndef add(x, y, /):\n    pass\n",
        ["PARAM_KIND_CHANGED:error", "PARAM_KIND_CHANGED:error"],
    ),
    (
        "*args removed",
        "@app.task\ndef add(x, *args):\n    pass\n",
        "@app.task\ndef add(x):\n    pass\n",
        ["VARARGS_REMOVED:error"],
    ),
    (
        "**kwargs removed",
        "@app.task\ndef add(x, **kwargs):\n    pass\n",
        "@app.task\ndef add(x):\n    pass\n",
        ["VARKW_REMOVED:error"],
    ),
    (
        "parameter gains a default (compatible: info)",
        BASE,
        "@app.task\ndef add(x, y=0):\n    pass\n",
        ["PARAM_BECAME_OPTIONAL:info"],
    ),
    (
        "default value changed",
        "@app.task\ndef add(x, y=1):\n    pass\n",
        "@app.task\ndef add(x, y=2):\n    pass\n",
        ["PARAM_DEFAULT_CHANGED:warning"],
    ),
    (
        "annotation changed",
        "@app.task\ndef add(x: int, y: int):\n    pass\n",
        "@app.task\ndef add(x: int, y: str):\n    pass\n",
        ["ANNOTATION_CHANGED:info"],
    ),
    (
        "class-based task gains a required parameter",
        "class Add(Task):\n    name = 'proj.add'\n    def run(self, x):\n        pass\n"
        "app.register_task(Add())\n",
        "class Add(Task):\n    name = 'proj.add'\n    def run(self, x, y):\n        pass\n"
        "app.register_task(Add())\n",
        ["PARAM_ADDED_REQUIRED:error"],
    ),
    (
        "bound task loses a parameter",
        "@app.task(bind=True)\ndef add(self, x, y):\n    pass\n",
        "@app.task(bind=True)\ndef add(self, x):\n    pass\n",
        ["PARAM_REMOVED:error"],
    ),
    # --- beat ------------------------------------------------------------------------------------
    (
        "beat args no longer bind after a parameter is removed",
        BASE
        + "app.conf.beat_schedule = {'e': {'task': 'proj.tasks.add', 'schedule': 5.0, 'args': (1, 2)}}\n",
        "@app.task\ndef add(x):\n    pass\n"
        "app.conf.beat_schedule = {'e': {'task': 'proj.tasks.add', 'schedule': 5.0, 'args': (1, 2)}}\n",
        ["PARAM_REMOVED:error", "BEAT_ARGS_UNBOUND:error"],
    ),
    (
        "new beat entry that does not bind",
        BASE,
        BASE
        + "app.conf.beat_schedule = {'e': {'task': 'proj.tasks.add', 'schedule': 5.0, 'kwargs': {'q': 1}}}\n",
        ["BEAT_ARGS_UNBOUND:error"],
    ),
    (
        "old beat entry (still running during the rollout) no longer binds",
        BASE
        + "app.conf.beat_schedule = {'e': {'task': 'proj.tasks.add', 'schedule': 5.0, 'args': (1, 2)}}\n",
        "@app.task\ndef add(x, *, y):\n    pass\n"
        "app.conf.beat_schedule = {'e': {'task': 'proj.tasks.add', 'schedule': 5.0, 'args': (1,), "
        "'kwargs': {'y': 2}}}\n",
        ["PARAM_KIND_CHANGED:error", "BEAT_ARGS_UNBOUND:error"],
    ),
    (
        "beat entry whose task is removed",
        BASE
        + "@app.task\ndef ping():\n    pass\n"
        + "app.conf.beat_schedule = {'p': {'task': 'proj.tasks.ping', 'schedule': 5.0}}\n",
        BASE + "app.conf.beat_schedule = {'p': {'task': 'proj.tasks.ping', 'schedule': 5.0}}\n",
        ["TASK_REMOVED:error", "BEAT_TASK_MISSING:error"],
    ),
    (
        "new beat entry for Celery's built-in backend_cleanup (every worker registers it)",
        BASE,
        BASE + "app.conf.beat_schedule = {'c': {'task': 'celery.backend_cleanup', 'schedule': 5.0}}\n",
        [],
    ),
    (
        "the app's own task named celery.* removed (not one of Celery's built-ins)",
        BASE + "@app.task(name='celery.mine')\ndef mine():\n    pass\n",
        BASE,
        ["TASK_REMOVED:error"],
    ),
    (
        "new beat entry naming a task that does not exist",
        BASE,
        BASE + "app.conf.beat_schedule = {'p': {'task': 'proj.tasks.typo', 'schedule': 5.0}}\n",
        ["BEAT_TASK_MISSING:error"],
    ),
    # --- suppression -----------------------------------------------------------------------------
    (
        "inline ignore on the decorator line",
        BASE,
        "@app.task  # deploykit: ignore[PARAM_REMOVED]\ndef add(x):\n    pass\n",
        ["PARAM_REMOVED:error:suppressed"],
    ),
    (
        "inline ignore on the def line covers only the named rule",
        BASE,
        "@app.task\ndef add(x, total, extra=0):  # deploykit: ignore[PARAM_RENAMED]\n    pass\n",
        ["PARAM_ADDED_OPTIONAL:warning", "PARAM_RENAMED:error:suppressed"],
    ),
    (
        "bare inline ignore covers every rule of the task",
        BASE,
        "@app.task  # deploykit: ignore\ndef add(x, y, z):\n    pass\n",
        ["PARAM_ADDED_REQUIRED:error:suppressed"],
    ),
    (
        "pyproject ignore entry",
        BASE + "@app.task\ndef legacy():\n    pass\n",
        BASE,
        ["TASK_REMOVED:error:suppressed"],
    ),
]

#: Suppressions from ``[tool.deploykit] ignore`` used by every case (only one case triggers it).
IGNORE = parse_ignore(["proj.tasks.legacy:TASK_REMOVED"])


def _key(finding: object) -> str:
    text = f"{finding.rule}:{finding.level.value}"  # type: ignore[attr-defined]
    return text + (":suppressed" if finding.suppressed else "")  # type: ignore[attr-defined]


@pytest.mark.parametrize(("old", "new", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rules(build, old: str, new: str, expected: list[str]) -> None:
    report = compare(
        build("old", old), build("new", new), command="diff", old_label="old", new_label="new", ignore=IGNORE
    )
    assert sorted(_key(f) for f in report.findings) == sorted(expected)
    for finding in report.findings:
        assert finding.message and finding.hint
        if finding.rule != "BEAT_TASK_MISSING":
            assert finding.file == "proj/tasks.py" and finding.line, finding


def test_table_covers_every_rule() -> None:
    covered = {e.split(":")[0] for case in CASES for e in case[3]}
    # WAITING_* findings come from the broker scan (`check --broker`): tests/scan/test_findings.py.
    assert covered == {rule for rule in RULES if not rule.startswith("WAITING_")}


#: What each finding says happens, per calling shape: (old source, new source, rule, fragments the
#: message must contain, fragments it must not contain).
CONSEQUENCES: list[tuple[str, str, str, str, list[str], list[str]]] = [
    (
        "required parameter added in front: positional messages fail or bind wrongly",
        "@app.task\ndef add(cart_id, coupon=None):\n    pass\n",
        "@app.task\ndef add(user_id, cart_id, coupon=None):\n    pass\n",
        "PARAM_ADDED_REQUIRED",
        [
            "passing their arguments by keyword lack it and fail with TypeError",
            "positional messages fail with TypeError or, depending on how many values they carry, "
            "bind the value meant for 'cart_id' to 'user_id'",
        ],
        ["every queued message"],
    ),
    (
        "required parameter added at the end: every message fails",
        BASE,
        "@app.task\ndef add(x, y, z):\n    pass\n",
        "PARAM_ADDED_REQUIRED",
        ["every queued message for this task lacks it and fails with TypeError", "by position or by keyword"],
        ["bind"],
    ),
    (
        "required parameter added in the middle, nothing optional after it: every message fails",
        BASE,
        "@app.task\ndef add(x, z, y):\n    pass\n",
        "PARAM_ADDED_REQUIRED",
        ["every queued message for this task lacks it and fails with TypeError"],
        ["bind the value"],
    ),
    (
        "required parameter added before an optional one: positional messages bind wrongly",
        "@app.task\ndef add(x, y=1):\n    pass\n",
        "@app.task\ndef add(x, z, y=1):\n    pass\n",
        "PARAM_ADDED_REQUIRED",
        [
            "fail with TypeError or, depending on how many values they carry, "
            "bind the value meant for 'y' to 'z'"
        ],
        [],
    ),
    (
        "renamed in place: keyword messages fail, positional ones bind as before",
        BASE,
        "@app.task\ndef add(x, total):\n    pass\n",
        "PARAM_RENAMED",
        [
            "queued messages passing y= by keyword fail with TypeError",
            "those passing it by position bind to 'total' as before",
        ],
        ["silently"],
    ),
    (
        "middle parameter removed: positional messages fail or shift",
        "@app.task\ndef add(x, y, z=0):\n    pass\n",
        "@app.task\ndef add(x, z=0):\n    pass\n",
        "PARAM_REMOVED",
        [
            "queued messages passing it by keyword fail with TypeError",
            "messages passing it by position fail with TypeError or, depending on how many values they "
            "carry, bind its value to 'z'",
        ],
        [],
    ),
    (
        "last parameter removed: positional messages passing it fail",
        BASE,
        "@app.task\ndef add(x):\n    pass\n",
        "PARAM_REMOVED",
        ["messages passing it by position fail with TypeError too"],
        ["bind"],
    ),
    (
        "parameter gains a default: compatible for queued messages",
        BASE,
        "@app.task\ndef add(x, y=0):\n    pass\n",
        "PARAM_BECAME_OPTIONAL",
        ["gained a default (0)", "compatible for queued messages"],
        [],
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "rule", "says", "never"), [c[1:] for c in CONSEQUENCES], ids=[c[0] for c in CONSEQUENCES]
)
def test_findings_state_the_consequence_per_calling_shape(
    build, old: str, new: str, rule: str, says: list[str], never: list[str]
) -> None:
    report = compare(build("old", old), build("new", new), command="diff", old_label="old", new_label="new")
    (item,) = [f for f in report.findings if f.rule == rule]
    for fragment in says:
        assert fragment in item.message, item.message
    for fragment in never:
        assert fragment not in item.message, item.message


def test_manifest_leaves_out_celery_builtins_only(build) -> None:
    """Celery's own built-ins are not the app's code; the app's tasks named celery.* are."""
    from deploykit.manifest.builtins import builtin_tasks

    manifest = build("new", "@app.task(name='celery.mine')\ndef mine():\n    pass\n")
    assert "celery.mine" in manifest.tasks
    assert not set(builtin_tasks()) & set(manifest.tasks)
