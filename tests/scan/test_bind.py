"""Binding calls to signatures: the TypeError Python itself raises, and positional slots."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploykit.scan.bind import CallChecker, Param, TaskSpec


def spec_of(func, name="t.task", bound=False) -> TaskSpec:
    params = tuple(
        Param(p.name, p.kind.name, p.default is not inspect.Parameter.empty)
        for p in inspect.signature(func).parameters.values()
    )
    return TaskSpec(name, func.__name__, params, bound, qualname=func.__qualname__)


def add(x, y): ...
def kwonly(a, *, b, c=1): ...
def posonly(a, b=2, /, c=3, *args, d, **kw): ...
def varargs(*items): ...


CASES = [
    (add, (1, 2), {}),
    (add, (1,), {}),
    (add, (1, 2, 3), {}),
    (add, (1,), {"y": 2}),
    (add, (1,), {"x": 2}),
    (add, (), {"z": 1}),
    (kwonly, (1,), {"b": 2}),
    (kwonly, (1, 2), {}),
    (kwonly, (1,), {}),
    (posonly, (1,), {"d": 4}),
    (posonly, (), {"a": 1, "d": 4}),
    (posonly, (1, 2, 3, 4, 5), {"d": 1, "zz": 2}),
    (varargs, (1, 2, 3), {}),
    (varargs, (), {"a": 1}),
]


@pytest.mark.parametrize(("func", "args", "kwargs"), CASES)
def test_error_is_exactly_what_python_raises(func, args, kwargs):
    try:
        func(*args, **kwargs)
        expected = None
    except TypeError as exc:
        expected = str(exc)
    assert CallChecker(spec_of(func)).error(args, kwargs) == expected


def test_bound_task_counts_self_like_the_worker():
    def task(self, x): ...

    checker = CallChecker(
        TaskSpec("t", "task", (Param("x", "POSITIONAL_OR_KEYWORD"),), bound=True, qualname=task.__qualname__)
    )
    assert checker.error((1,), {}) is None
    with pytest.raises(TypeError) as real:
        task(object(), 1, 2)
    assert checker.error((1, 2), {}) == str(real.value)


def test_positional_slots():
    checker = CallChecker(spec_of(posonly))
    assert checker.positional_slots(5) == ("a", "b", "c", "*args", "*args")
    assert CallChecker(spec_of(add)).positional_slots(3) == ("x", "y", "<extra>")


@pytest.mark.parametrize("bad", ["x y", "class", "1a", "a;import os"])
def test_unusable_names_are_refused_not_executed(bad):
    with pytest.raises(ValueError):
        CallChecker(TaskSpec("t", "f", (Param(bad, "POSITIONAL_OR_KEYWORD"),)))


@given(
    st.lists(st.integers(), max_size=6),
    st.dictionaries(st.sampled_from("abcdxyz"), st.integers(), max_size=4),
)
def test_agrees_with_python_on_random_calls(args, kwargs):
    for func in (add, kwonly, posonly, varargs):
        try:
            func(*args, **kwargs)
            expected = None
        except TypeError as exc:
            expected = str(exc)
        assert CallChecker(spec_of(func)).error(args, kwargs) == expected
