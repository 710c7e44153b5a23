"""Single- vs multi-query mode: the only three things that differ between them.

A mode is (queries of a <search> block, observation formatter, corrective note); the prompt
text is `prompts.instruction(mode)`. GenerationManager runs the same mechanism for both.

    >>> hits = [[{"id": "p1", "contents": '"Paris"\\nCapital of France.', "score": 1.0}]]
    >>> build_mode(AgentConfig(8, 4, 4, mode="single")).format_observation(["paris"], hits)
    'Doc 1(Title: Paris) Capital of France.'
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from rag_r1.llm_agent.actions import split_queries
from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.prompts import invalid_action_note
from rag_r1.search.corpus import split_title

Hits = list[dict]


def format_doc(rank: int, hit: dict) -> str:
    """`Doc 1(Title: Paris) Paris is ...` (Search-R1's passage line)."""
    title, text = split_title(hit["contents"])
    return f"Doc {rank}(Title: {title}) {text}"


def format_single(queries: list[str], hits: list[Hits]) -> str:
    """One query's passages, one `Doc i(Title: ...) text` line each."""
    return "\n".join(format_doc(rank, hit) for rank, hit in enumerate(hits[0], start=1))


def format_multi(queries: list[str], hits: list[Hits]) -> str:
    """`{"query": [q1, q2], "documents": ["Doc 1(...) ...\\nDoc 2(...) ...", "..."]}`, one entry per query."""
    documents = ["\n".join(format_doc(rank, hit) for rank, hit in enumerate(h, start=1)) for h in hits]
    return json.dumps({"query": queries, "documents": documents}, ensure_ascii=False)


@dataclass(frozen=True)
class AgentMode:
    name: str
    queries_of: Callable[[str], list[str]]  # content of <search> -> queries (empty: invalid action)
    format_observation: Callable[[list[str], list[Hits]], str]
    invalid_note: str


def build_mode(config: AgentConfig) -> AgentMode:
    if config.mode == "single":
        # A single query may itself contain commas ("Paris, Texas"), so it is never split.
        return AgentMode("single", lambda c: [c.strip()] if c.strip() else [], format_single,
                         invalid_action_note("single"))
    return AgentMode(
        "multi", lambda c: split_queries(c, config.query_delimiter, config.max_queries), format_multi,
        invalid_action_note("multi"))
