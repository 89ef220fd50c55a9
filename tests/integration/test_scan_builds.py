"""``deploykit scan`` judges each stamped message against the manifest of the build that produced
it, read from the manifest registry in the same real Redis, without ``--manifest``.

Build A is release 1 of the shop app (``shop.charge(order_id, amount)``), build B release 2
(``shop.charge(amount, order_id)``: reordered); the new code is release 2. Messages stamped A
(through ``deploykit.celery.install``) and B wait in the queue with no worker; A's positional
``charge`` lands on other parameters under the new code, B's binds as B meant it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deploykit.celery import install
from tests.cli import ROOT, run_deploykit

pytestmark = pytest.mark.integration
NEW_APP = "tests.apps.shop_v2"


def dk(*args: str, env: dict[str, str]) -> Any:
    return run_deploykit(*args, env={"PYTHONPATH": str(ROOT), **env}, timeout=120)


def _producer(url: str, build: str | None) -> Any:
    from celery import Celery

    app = Celery(f"producer-{build}", broker=url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    if build is not None:
        install(app, build=build)
    return app


def _push(url: str, build: str | None, charges: int, *, notify: bool = False) -> None:
    """``charges`` positional ``shop.charge`` messages (order 1, amount 10 as build A writes it;
    amount 10, order 1 as build B does), stamped ``build``."""
    app = _producer(url, build)
    args = [10, 1] if build == "B" else [1, 10]
    for _ in range(charges):
        app.send_task("shop.charge", args=args)
    if notify:
        app.send_task("shop.notify", args=[7])
    app.close()


def _groups(doc: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(g["task"], g["verdict"]): g["count"] for g in doc["groups"] if g["count"]}


def test_each_build_is_judged_against_its_own_manifest_from_the_registry(redis_url: str, tmp_path: Path):
    import redis

    env = {"DEPLOYKIT_TEST_BROKER": redis_url}
    for build, app in (("A", "tests.apps.shop_v1"), ("B", "tests.apps.shop_v2")):
        published = dk("-b", redis_url, "manifest", "publish", "--build", build, "-A", app, env=env)
        assert published.returncode == 0, published.stderr
    _push(redis_url, "A", 3, notify=True)
    _push(redis_url, "B", 2)
    _push(redis_url, "Z", 1)  # a build the registry does not know
    _push(redis_url, None, 1)  # unstamped

    scan = ("-b", redis_url, "scan", "-A", NEW_APP, "--no-beat", "--no-workers")
    result = dk(*scan, "--json", env=env)
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    # A's three charges misbind (v1 -> v2 reorders), A's notify fails (a required parameter
    # added); B's two, Z's and the unstamped one bind as far as anyone can tell.
    assert _groups(doc) == {
        ("shop.charge", "misbound"): 3,
        ("shop.notify", "fails"): 1,
        ("shop.charge", "runs"): 4,
    }
    misbound = next(g for g in doc["groups"] if g["verdict"] == "misbound")
    assert list(misbound["reasons"]) == [
        "positional arguments land on other parameters (order_id→amount, amount→order_id)"
    ]
    assert doc["old_builds"]["stamped"] == 7 and doc["old_builds"]["unknown"] == 1
    assert "deploykit:manifests" in doc["old_builds"]["registry"]
    assert {(b["build"], b["messages"], b["old_side"]) for b in doc["old_builds"]["builds"]} == {
        ("A", 4, "manifest"),
        ("B", 2, "manifest"),
        ("Z", 1, "unknown"),
    }
    assert doc["old_manifest"] is None
    assert any(
        n.startswith("stamped messages (7): judged against their build's manifest: A 4, B 2")
        for n in doc["notes"]
    )
    assert doc["notes"][-1] == (
        "no old manifest given (--manifest): reordered parameters cannot be detected in the 2 message(s) "
        "without their build's manifest"
    )

    # With --manifest v1 for the rest, B's messages are still judged against B (they run), while
    # Z's and the unstamped one, judged against v1, misbind.
    v1 = tmp_path / "v1.json"
    shown = dk("-b", redis_url, "manifest", "show", "A", env=env)
    assert shown.returncode == 0, shown.stderr
    v1.write_text(shown.stdout)
    with_old = json.loads(dk(*scan, "--manifest", str(v1), "--json", env=env).stdout)
    assert _groups(with_old) == {
        ("shop.charge", "misbound"): 5,
        ("shop.notify", "fails"): 1,
        ("shop.charge", "runs"): 2,
    }

    # The text says it in one line.
    text = dk(*scan, env=env)
    assert text.returncode == 1, text.stderr
    line = next(line for line in text.stdout.splitlines() if "stamped messages" in line)
    assert "A 4, B 2; 1 of an unknown build (no old side; registry: " in line

    # check --broker reads the same registry.
    checked = dk(
        "-b", redis_url, "check", "-A", NEW_APP, "--manifest", str(v1), "--broker", "--json", env=env
    )
    findings = json.loads(checked.stdout)["findings"]
    waiting = {
        (f["rule"], f["task"], f["data"]["count"]) for f in findings if f["rule"].startswith("WAITING_")
    }
    assert ("WAITING_MISBOUND", "shop.charge", 5) in waiting

    # A corrupt registry entry: that build's messages are undecidable, with the reason; no traceback.
    client = redis.Redis.from_url(redis_url)
    client.set("deploykit:manifests:build:B", b"{not json")
    client.close()
    broken = dk(*scan, "--json", env=env)
    assert broken.returncode == 1 and "Traceback" not in broken.stderr, broken.stderr
    doc = json.loads(broken.stdout)
    assert _groups(doc)[("shop.charge", "undecidable")] == 2
    assert doc["undecidable_reasons"] == {"build 'B': registry entry of build 'B' is corrupt (not JSON)": 2}
    (b_row,) = [b for b in doc["old_builds"]["builds"] if b["build"] == "B"]
    assert (b_row["old_side"], b_row["problem"]) == (
        "unreadable",
        "registry entry of build 'B' is corrupt (not JSON)",
    )


def test_a_registry_directory_is_read_with_registry(redis_url: str, tmp_path: Path):
    env = {"DEPLOYKIT_TEST_BROKER": redis_url}
    registry = tmp_path / "registry"
    published = dk(
        "manifest",
        "publish",
        "--build",
        "A",
        "-A",
        "tests.apps.shop_v1",
        "--registry",
        str(registry),
        env=env,
    )
    assert published.returncode == 0, published.stderr
    _push(redis_url, "A", 2)
    scan = ("-b", redis_url, "scan", "-A", NEW_APP, "--no-beat", "--no-workers", "--json")
    # The broker's registry is empty: A is unknown there.
    doc = json.loads(dk(*scan, env=env).stdout)
    assert _groups(doc) == {("shop.charge", "runs"): 2} and doc["old_builds"]["unknown"] == 2
    for extra, more_env in (
        ((("--registry", str(registry))), {}),
        ((), {"DEPLOYKIT_REGISTRY": str(registry)}),
    ):
        doc = json.loads(dk(*scan, *extra, env={**env, **more_env}).stdout)
        assert _groups(doc) == {("shop.charge", "misbound"): 2}, extra
        assert doc["old_builds"]["registry"] == f"directory {registry}"
