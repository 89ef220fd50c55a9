"""Every finding ID the checks can emit has its README section, which the finding links to."""

from __future__ import annotations

import re
from pathlib import Path

import deploykit.doctor.checks as checks

DOC = Path(__file__).resolve().parents[2] / "README.md"


def _emitted_ids() -> set[str]:
    source = Path(checks.__file__).read_text()
    return set(re.findall(r'Finding\(\s*"([a-z0-9-]+)",\s*Level\.', source))


def test_every_finding_has_an_anchor() -> None:
    ids = _emitted_ids()
    assert len(ids) >= 20
    text = DOC.read_text()
    anchors = set(re.findall(r'<a id="dk-([a-z0-9-]+)"></a>', text))
    assert ids - anchors == set(), "add a section to README.md (deploykit doctor)"
    assert anchors - ids == set(), "a documented finding is never emitted"
