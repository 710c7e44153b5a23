"""scripts/gpu/check_requirements.py: requirements.txt resolves to its own torch, vllm and
transformers pins (a dry run against the package index, skipped when the index does not answer)."""
from __future__ import annotations

import pytest

from scripts.gpu.check_requirements import (CHECKED, MATCH, ROOT, UNREACHABLE_INDEX, check, pinned_versions,
                                            resolved_versions, same_version)


def test_pins_and_report_are_read_by_canonical_name(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch==2.13.0\nray[default]==2.60.0  # with extras\nSentence_Transformers==6.2.0\n"
                            "numpy\nfaiss-gpu>=1.15\n")
    assert pinned_versions(requirements) == {"torch": "2.13.0", "ray": "2.60.0", "sentence-transformers": "6.2.0"}
    report = {"install": [{"metadata": {"name": "Torch", "version": "2.13.0+cpu"}},
                          {"metadata": {"name": "sentence_transformers", "version": "6.2.0"}}]}
    assert resolved_versions(report) == {"torch": "2.13.0+cpu", "sentence-transformers": "6.2.0"}
    assert same_version("2.13.0", "2.13.0+cpu")  # a local build of the pinned release
    assert not same_version("2.13.0", "2.14.0")
    assert not same_version("2.13.0", None)  # not resolved at all


def test_requirements_txt_resolves_to_its_pins():
    outcome = check(ROOT / "requirements.txt", timeout_s=240)
    if outcome.status == UNREACHABLE_INDEX:
        pytest.skip(outcome.message)
    assert outcome.status == MATCH, outcome.message
    pins = pinned_versions(ROOT / "requirements.txt")
    assert {name: version.split("+")[0] for name, version in outcome.resolved.items()} == {
        name: pins[name] for name in CHECKED}
