"""docs/config.md is what the schemas say, and each row takes its default and meaning from the schema."""
from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from scripts.config_reference import PAGE, REQUIRED, Row, render, rows, shown


@dataclass
class Inner:
    """A node's docstring."""

    size: int = 4  # rows per batch
    offload: bool = False


@dataclass
class Outer:
    path: str = MISSING  # where the model is
    # Two lines of comment
    # above the field.
    rate: float = 0.5  # and one beside it
    follows: int = "${size}"  # type: ignore[assignment]  # follows size
    plain: list[int] = field(default_factory=lambda: [1, 2])
    inner: Inner = field(default_factory=lambda: Inner(offload=True))


def test_docs_config_md_is_what_the_schemas_say():
    assert PAGE.read_text(encoding="utf-8") == render(), \
        "docs/config.md is stale: run python -m scripts.config_reference"


def test_rows_read_defaults_types_and_comments_from_the_schema():
    (root, root_doc, own), (node, node_doc, inner) = rows(Outer, "x.")
    assert (root, root_doc, node, node_doc) == ("x", None, "x.inner", "A node's docstring.")
    assert own == [Row("x.path", "str", "???", "where the model is"),
                   Row("x.rate", "float", 0.5, "Two lines of comment above the field. and one beside it"),
                   Row("x.follows", "int", "${size}", "follows size"),
                   Row("x.plain", "list[int]", [1, 2], "")]
    # the enclosing schema's default of a node wins over the node class's own
    assert inner == [Row("x.inner.size", "int", 4, "rows per batch"), Row("x.inner.offload", "bool", True, "")]
    assert [shown(v) for v in ("???", REQUIRED, True, None, [1, 2], "a")] == [
        "required", "required", "`true`", "`null`", "`[1, 2]`", "`a`"]


def test_the_page_has_a_row_for_every_profile_and_agent_key():
    page = render()
    for key in ("actor_rollout_ref.actor.optim.lr", "algorithm.negative_advantage_scale", "optim.warmup_steps_ratio",
                "agent.max_turns", "retriever.timeout", "encoder_backend", "recipe.rl_questions"):
        assert f"| `{key}` |" in page
    assert "| `actor_rollout_ref.ref.fsdp_config.param_offload` | `bool` | `true` |" in page
    assert "| `agent.max_prompt_length` |" not in page  # the agent reads it from data.max_prompt_length
