"""The operator ACL rules: least privilege by construction, documented in docs/acl.md, never a password in clear."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook_lib import acl
from runbook_lib.run.report import available

DOC = Path(__file__).resolve().parents[2] / "docs" / "acl.md"


def test_every_notebook_has_rules():
    assert set(available()) <= set(acl.SECTIONS)


def test_rules_start_from_nothing_and_limit_plain_writes_to_the_prefix():
    rules = acl.operator_rules()
    assert rules[:3] == ["~*", "resetchannels", "-@all"]
    assert not [r for r in rules if r.startswith("+@") or r in ("+set", "+flushall", "+config|set", "+acl", "+keys")]
    assert rules[-1].startswith("(~runbook:* ") and rules[-1].endswith(")")
    assert "+set" in rules[-1] and "+get" in rules[-1]


def test_a_section_gets_only_what_it_needs():
    plan = acl.operator_rules(["30_plan"])
    assert "+migrate" not in plan and "+cluster|countkeysinslot" in plan and not plan[-1].startswith("(")
    with pytest.raises(ValueError, match="unknown sections"):
        acl.operator_rules(["99_nope"])


def test_config_line_hashes_the_password():
    line = acl.config_line("runbook", "clear-text-pw", ["+ping"])
    assert "clear-text-pw" not in line and line.startswith("user runbook reset on #") and line.endswith("+ping")


def test_docs_list_every_rule_of_every_section():
    doc = DOC.read_text().replace("\\|", "|")
    for section, rules in {**acl.SECTIONS, "every section": acl.CONNECT}.items():
        assert section in doc
        for rule in rules:
            assert f"`{rule}`" in doc or f" {rule}" in doc, f"docs/acl.md does not explain {rule} ({section})"
    for section, rules in acl.PREFIXED.items():
        for rule in rules:
            assert rule in doc, f"docs/acl.md does not explain {rule} ({section})"
