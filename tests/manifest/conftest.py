"""Build manifests from source text through the real collector (a fresh Celery app per source)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from deploykit.manifest.collect import collect_app
from deploykit.manifest.model import Manifest

HEADER = "from celery import Celery, Task\napp = Celery('proj', set_as_current=False)\n"


def manifest_from_source(source: str, root: Path, module: str = "proj.tasks") -> Manifest:
    """Execute ``source`` as ``module`` (written to disk, so line numbers and comments are real)."""
    from celery import Celery, _state

    path = root / (module.replace(".", "/") + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = HEADER + textwrap.dedent(source)
    path.write_text(text)
    namespace: dict[str, object] = {"__name__": module, "__file__": str(path)}
    # @app.task also registers the function on every app finalized later (shared=True): restore
    # Celery's global finalizer set so one case's tasks do not leak into the next app.
    finalizers = set(_state._on_app_finalizers)
    try:
        exec(compile(text, str(path), "exec"), namespace)
        app = namespace["app"]
        assert isinstance(app, Celery)
        return collect_app(app, root)
    finally:
        _state._on_app_finalizers.clear()
        _state._on_app_finalizers.update(finalizers)


@pytest.fixture
def build(tmp_path: Path) -> Callable[[str, str], Manifest]:
    def make(side: str, source: str) -> Manifest:
        return manifest_from_source(source, tmp_path / side)

    return make
