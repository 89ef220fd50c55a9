"""Manifest files are open-ended input: property-based tests of (de)serialisation and the diff."""

from __future__ import annotations

import json
import keyword
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploykit.errors import UsageError
from deploykit.manifest import model
from deploykit.manifest.diff import diff
from deploykit.manifest.model import BeatEntry, Manifest, Parameter, Task

identifiers = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8).filter(
    lambda s: s.isidentifier() and not keyword.iskeyword(s)
)
texts = st.text(max_size=20)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)


@st.composite
def parameter_lists(draw: Any) -> tuple[Parameter, ...]:
    names = draw(st.lists(identifiers, unique=True, max_size=8))
    cut = sorted(draw(st.lists(st.integers(0, len(names)), min_size=2, max_size=2)))
    posonly, pok, kwonly = names[: cut[0]], names[cut[0] : cut[1]], names[cut[1] :]
    positional = [(n, model.POSITIONAL_ONLY) for n in posonly] + [
        (n, model.POSITIONAL_OR_KEYWORD) for n in pok
    ]
    defaults_from = draw(st.integers(0, len(positional)))
    params = []
    for index, (name, kind) in enumerate(positional):
        has_default = index >= defaults_from
        params.append(
            Parameter(
                name,
                kind,
                has_default,
                draw(texts) if has_default else None,
                draw(st.none() | texts),
            )
        )
    taken = set(names)
    if draw(st.booleans()) and "args" not in taken:
        params.append(Parameter("args", model.VAR_POSITIONAL))
    for name in kwonly:
        has_default = draw(st.booleans())
        params.append(Parameter(name, model.KEYWORD_ONLY, has_default, draw(texts) if has_default else None))
    if draw(st.booleans()) and "kwargs" not in taken:
        params.append(Parameter("kwargs", model.VAR_KEYWORD))
    return tuple(params)


@st.composite
def tasks(draw: Any, name: str) -> Task:
    return Task(
        name=name,
        parameters=draw(parameter_lists()),
        module=draw(st.none() | texts),
        qualname=draw(st.none() | texts),
        file=draw(st.none() | texts),
        line=draw(st.none() | st.integers(1, 10_000)),
        bound=draw(st.booleans()),
        queue=draw(st.none() | texts),
        options=draw(st.dictionaries(st.sampled_from(model.OPTION_NAMES), scalars)),
        ignore=tuple(
            sorted(draw(st.lists(st.sampled_from(["PARAM_REMOVED", "*", "TASK_REMOVED"]), unique=True)))
        ),
    )


@st.composite
def manifests(draw: Any) -> Manifest:
    names = draw(st.lists(texts, unique=True, max_size=6))
    task_map = {n: draw(tasks(n)) for n in sorted(names)}
    beat = tuple(
        BeatEntry(
            name=draw(texts),
            task=draw(st.sampled_from(names) if names else texts),
            args=tuple(draw(st.lists(texts, max_size=3))),
            kwargs=draw(st.dictionaries(identifiers, texts, max_size=3)),
            schedule=draw(st.none() | texts),
            queue=draw(st.none() | texts),
        )
        for _ in range(draw(st.integers(0, 3)))
    )
    beat = tuple(sorted(beat, key=lambda e: (e.name, e.task)))
    generator = draw(st.dictionaries(st.sampled_from(["celery", "kombu"]), texts))
    return Manifest(tasks=task_map, beat=beat, generator=generator)


@given(manifests())
def test_json_round_trip_is_exact_and_byte_stable(manifest: Manifest) -> None:
    text = model.dumps(manifest)
    again = model.loads(text)
    assert model.dumps(again) == text
    assert again.tasks == manifest.tasks
    assert [e.key() for e in again.beat] == [e.key() for e in manifest.beat]


@given(manifests())
def test_a_manifest_diffed_with_itself_yields_nothing(manifest: Manifest) -> None:
    assert list(diff(manifest, manifest)) == []
    assert list(diff(manifest, model.loads(model.dumps(manifest)))) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_random_json_is_rejected_with_a_usage_error(document: Any) -> None:
    try:
        loaded = model.loads(json.dumps(document))
    except UsageError:
        return
    assert isinstance(loaded, Manifest)  # only if hypothesis stumbled on a valid manifest


@given(st.binary(max_size=200))
def test_random_bytes_are_rejected_with_a_usage_error(data: bytes) -> None:
    with pytest.raises(UsageError):
        model.loads(data)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(manifests(), st.data())
def test_corrupted_manifests_load_or_fail_cleanly(manifest: Manifest, data: st.DataObject) -> None:
    """Replace any one value in a valid document by random JSON: a manifest or a UsageError, nothing else."""
    document = model.to_document(manifest)
    paths: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, [*path, key])
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, [*path, index])

    walk(document, [])
    path = data.draw(st.sampled_from(paths[1:])) if len(paths) > 1 else []
    replacement = data.draw(json_values)
    if path:
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = replacement
    else:
        document = replacement
    try:
        loaded = model.loads(json.dumps(document))
    except UsageError:
        return
    assert isinstance(loaded, Manifest)


def test_future_schema_is_refused_with_upgrade_advice() -> None:
    with pytest.raises(UsageError, match="newer than this deploykit understands"):
        model.loads(json.dumps({"schema": model.SCHEMA_VERSION + 1, "tasks": {}}))


@pytest.mark.parametrize(
    "document",
    [
        {"schema": "1", "tasks": {}},
        {"schema": True, "tasks": {}},
        {"schema": 0, "tasks": {}},
        {"tasks": {}},
        {"schema": 1},
        {"schema": 1, "tasks": {"a": {"name": "b", "parameters": []}}},
        {
            "schema": 1,
            "tasks": {"a": {"name": "a", "parameters": [{"name": "x", "kind": "WEIRD", "has_default": 0}]}},
        },
        {
            "schema": 1,
            "tasks": {
                "a": {
                    "name": "a",
                    "parameters": [
                        {"name": "x", "kind": "POSITIONAL_OR_KEYWORD", "has_default": True, "default": "1"},
                        {"name": "y", "kind": "POSITIONAL_OR_KEYWORD", "has_default": False},
                    ],
                }
            },
        },
        {
            "schema": 1,
            "tasks": {
                "a": {
                    "name": "a",
                    "parameters": [
                        {"name": "x", "kind": "KEYWORD_ONLY", "has_default": False},
                        {"name": "y", "kind": "POSITIONAL_OR_KEYWORD", "has_default": False},
                    ],
                }
            },
        },
        {"schema": 1, "tasks": {"a": {"name": "a", "parameters": [], "line": True}}},
    ],
)
def test_invalid_documents(document: Any) -> None:
    with pytest.raises(UsageError, match="not a valid deploykit manifest"):
        model.loads(json.dumps(document))


def test_minimal_document_is_accepted() -> None:
    """Optional keys may be absent (the scan's benchmark writes such files)."""
    manifest = model.loads(
        json.dumps(
            {
                "schema": 1,
                "tasks": {
                    "t": {
                        "name": "t",
                        "parameters": [{"name": "x", "kind": "POSITIONAL_OR_KEYWORD", "has_default": False}],
                    }
                },
            }
        )
    )
    assert manifest.tasks["t"].signature_text() == "(x)"
