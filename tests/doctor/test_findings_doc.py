"""Every rule ID the checks can emit has its README section, which the finding links to."""

from __future__ import annotations

import re
from pathlib import Path

import deploykit.doctor.checks as checks
from deploykit.docs import rule_slug

DOC = Path(__file__).resolve().parents[2] / "README.md"


def _emitted_ids() -> set[str]:
    source = Path(checks.__file__).read_text()
    return set(re.findall(r'finding\(\s*"([A-Za-z0-9_-]+)",\s*Level\.', source))


def test_every_finding_has_an_anchor_and_a_heading() -> None:
    ids = _emitted_ids()
    assert len(ids) >= 20
    # One rule-ID style for every command: UPPER_SNAKE, like the manifest and scan rules.
    assert {i for i in ids if not re.fullmatch(r"[A-Z][A-Z0-9_]*", i)} == set()
    text = DOC.read_text()
    # The anchors (and the docs pages) keep the lower-kebab slug, so published links stay valid.
    anchors = set(re.findall(r'<a id="dk-([a-z0-9-]+)"></a>', text))
    assert {rule_slug(i) for i in ids} - anchors == set(), "add a section to README.md (deploykit doctor)"
    assert anchors - {rule_slug(i) for i in ids} == set(), "a documented finding is never emitted"
    for rule_id in ids:
        assert f'<a id="dk-{rule_slug(rule_id)}"></a>\n##### `{rule_id}` (' in text, rule_id
