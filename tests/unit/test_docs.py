"""Finding links: one absolute URL scheme for every rule ID, with a configurable base."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploykit.docs import DEFAULT_DOCS_URL, docs_base, rule_url
from deploykit.doctor.model import Level
from deploykit.doctor.model import finding as finding_of
from deploykit.errors import UsageError


@pytest.mark.parametrize(
    ("rule_id", "url"),
    [
        (
            "ACKS_LATE_WITHOUT_REJECT",
            "https://deploykit.readthedocs.io/en/stable/rules/acks-late-without-reject/",
        ),
        # doctor's former kebab-case ID names the same page: links published before stay valid.
        (
            "acks-late-without-reject",
            "https://deploykit.readthedocs.io/en/stable/rules/acks-late-without-reject/",
        ),
        ("TASK_REMOVED", "https://deploykit.readthedocs.io/en/stable/rules/task-removed/"),
        ("WAITING_FAILS", "https://deploykit.readthedocs.io/en/stable/rules/waiting-fails/"),
    ],
)
def test_doctor_manifest_and_scan_rules_share_one_scheme(rule_id: str, url: str) -> None:
    assert rule_url(rule_id, DEFAULT_DOCS_URL) == url


def test_the_base_comes_from_the_environment_then_pyproject_then_the_default(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert docs_base({}, plain) == DEFAULT_DOCS_URL
    configured = tmp_path / "configured"
    configured.mkdir()
    (configured / "pyproject.toml").write_text('[tool.deploykit]\ndocs_url = "https://docs.example.com/dk"\n')
    assert docs_base({}, configured) == "https://docs.example.com/dk"
    assert rule_url("TASK_REMOVED", docs_base({}, configured)) == "https://docs.example.com/dk/task-removed/"
    env = {"DEPLOYKIT_DOCS_URL": "https://mirror.example.org/rules/"}
    assert docs_base(env, configured) == "https://mirror.example.org/rules/"


@pytest.mark.parametrize("value", ["README.md#dk-", "", "42"])
def test_a_relative_or_malformed_base_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError, match="DEPLOYKIT_DOCS_URL must be an absolute URL"):
        docs_base({"DEPLOYKIT_DOCS_URL": value or " "})


def test_doctor_findings_link_to_the_absolute_page(monkeypatch: pytest.MonkeyPatch) -> None:
    finding = finding_of("VISIBILITY_TIMEOUT_BELOW_ETA", Level.ERROR, "title", "why", "fix")
    monkeypatch.delenv("DEPLOYKIT_DOCS_URL", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # this repository: no docs_url configured
    assert finding.docs == "https://deploykit.readthedocs.io/en/stable/rules/visibility-timeout-below-eta/"
    monkeypatch.setenv("DEPLOYKIT_DOCS_URL", "https://internal.example/deploykit")
    assert finding.docs == "https://internal.example/deploykit/visibility-timeout-below-eta/"
