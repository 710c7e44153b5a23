"""Single- vs multi-query mode: everything that differs between them, in one place.

A mode says how many queries one <search> block holds and how they are written and read back, how
the retrieved passages are shown, which instruction and corrective note the policy gets, and how
a gold trajectory words its plan (rag_r1.sft.evidence). GenerationManager, the SFT builders and
evaluation all take an `AgentMode` from `build_mode`, the only place that branches on the name.

    >>> hits = [[{"id": "p1", "contents": '"Paris"\\nCapital of France.', "score": 1.0}]]
    >>> build_mode("single").format_observation(["paris"], hits)
    'Doc 1(Title: Paris) Capital of France.'
    >>> multi = build_mode("multi", max_queries=2, delimiter=";")
    >>> multi.join_queries(["Paris", "Lyon"]), multi.queries_of("Paris; Lyon; Nice")
    ('Paris; Lyon', ['Paris', 'Lyon'])
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from rag_r1.llm_agent.actions import split_queries
from rag_r1.llm_agent.config import MODES, AgentConfig
from rag_r1.llm_agent.prompts import instruction, invalid_action_note, user_content
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


def json_escaped(text: str) -> str:
    """`text` as it reads inside a JSON string (format_multi's documents)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def plan_single(names: str, round_no: int, rounds: int, queries: int) -> str:
    """A single-mode gold trajectory's plan for search round `round_no` of `rounds`."""
    if round_no > 0:
        return f"Next I need to look up {names}."
    if rounds > 1:
        return f"To answer this I will first look up {names}."
    return f"To answer this I need to look up {names}."


def plan_multi(names: str, round_no: int, rounds: int, queries: int) -> str:
    """A multi-mode gold trajectory's plan: worded apart from single mode's from the first word on, so
    a model trained on both follows the instruction it is given (a shared opening taught a 135M model
    one query per round in multi mode too)."""
    together = " in parallel" if queries > 1 else ""
    return f"{'Next I' if round_no > 0 else 'I'} will search {names}{together}."


@dataclass(frozen=True)
class AgentMode:
    name: str  # single | multi
    max_queries: int  # agent.max_queries, as the instruction states it (multi mode)
    delimiter: str  # agent.query_delimiter, as the instruction states it (multi mode)
    queries_per_search: int  # queries one <search> holds: 1 in single mode, max_queries in multi
    queries_of: Callable[[str], list[str]]  # content of <search> -> queries (empty: invalid action)
    join_queries: Callable[[list[str]], str]  # queries -> content of <search>; queries_of reads them back
    as_query: Callable[[str], str]  # a text (a title, a question) as one query that queries_of keeps whole
    format_observation: Callable[[list[str], list[Hits]], str]
    doc_as_observed: Callable[[str], str]  # a format_doc line as it reads inside format_observation's text
    plan: Callable[[str, int, int, int], str]  # (names, round_no, rounds, queries) -> a gold plan sentence

    @property
    def instruction(self) -> str:
        """The instruction the mode's prompts begin with (prompts.instruction)."""
        return instruction(self.name, self.max_queries, self.delimiter)

    @property
    def invalid_note(self) -> str:
        return invalid_action_note(self.name)

    def user_content(self, question: str) -> str:
        """The user message of `question` in this mode (prompts.user_content)."""
        return user_content(question, self.name, self.max_queries, self.delimiter)


def build_mode(name: str, max_queries: int = AgentConfig.max_queries,
               delimiter: str = AgentConfig.query_delimiter) -> AgentMode:
    """The mode called `name` ("single" or "multi"); `max_queries` and `delimiter` are the agent's."""
    if name == "single":
        # A single query may itself contain the delimiter ("Paris, Texas"), so it is never split.
        return AgentMode("single", max_queries, delimiter, 1,
                         queries_of=lambda content: [content.strip()] if content.strip() else [],
                         join_queries=_one_query, as_query=str.strip, format_observation=format_single,
                         doc_as_observed=lambda line: line, plan=plan_single)
    if name == "multi":
        return AgentMode("multi", max_queries, delimiter, max_queries,
                         queries_of=lambda content: split_queries(content, delimiter, max_queries),
                         join_queries=f"{delimiter} ".join,
                         # the delimiter inside a title becomes a space, so the split gives it back whole
                         as_query=lambda text: " ".join(text.replace(delimiter, " ").split()),
                         format_observation=format_multi, doc_as_observed=json_escaped, plan=plan_multi)
    raise ValueError(f"mode={name!r}: expected one of {MODES}")


def mode_of(config: AgentConfig) -> AgentMode:
    """The mode an agent's config asks for."""
    return build_mode(config.mode, config.max_queries, config.query_delimiter)


def _one_query(queries: list[str]) -> str:
    if len(queries) != 1:
        raise ValueError(f"single mode searches one query at a time, got {queries}")
    return queries[0]
