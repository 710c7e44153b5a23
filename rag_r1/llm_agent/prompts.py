"""Every text the agent's policy reads that is not retrieved: instructions and corrective notes.

One module owns them so RL data (scripts/data_process), SFT builders, evaluation and the rollout
all show the policy the same words. The chat prompt is
`[{"role": "user", "content": instruction(mode) + question}]` (docs/architecture.md).

    >>> user_content("who wrote hamlet", "single").endswith("Question: who wrote hamlet?")
    True
"""
from __future__ import annotations

from rag_r1.llm_agent.config import AgentConfig

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}

_SHARED_START = (
    "Answer the question below. Think before every step, writing your reasoning between <think> "
    "and </think>. "
)
_SHARED_END = (
    "Search as many times as you need. Once you are sure, give only the final answer, as short as "
    "possible, between <answer> and </answer>, for example <answer> Marie Curie </answer>. "
    "Question: "
)


def instruction(mode: str, max_queries: int = AgentConfig.max_queries, delimiter: str = AgentConfig.query_delimiter
                ) -> str:
    """The instruction placed before the question, for `mode` "single" or "multi"."""
    if mode == "single":
        search = (
            "When you are missing a fact, look it up by writing one query between <search> and "
            "</search>; the top passages come back between <information> and </information>. "
        )
    elif mode == "multi":
        count = _NUMBER_WORDS.get(max_queries, str(max_queries))
        sep = {",": "commas", ";": "semicolons", "\n": "new lines"}.get(delimiter, repr(delimiter))
        search = (
            f"When you are missing facts, look them up by writing up to {count} short queries, "
            f"separated by {sep}, between <search> and </search>, one query per fact you need; "
            "they are searched in parallel and the results come back between <information> and "
            "</information> as a JSON object listing the documents found for each query. "
        )
    else:
        raise ValueError(f"mode={mode!r}: expected 'single' or 'multi'")
    return _SHARED_START + search + _SHARED_END


SINGLE_QUERY_INSTRUCTION = instruction("single")
MULTI_QUERY_INSTRUCTION = instruction("multi")


def search_part(text: str) -> str | None:
    """The mode's part of the instruction that `text` (a prompt) holds: what sits between the opening
    and the closing every instruction shares; None when `text` holds no instruction of ours."""
    start, end = text.find(_SHARED_START), text.find(_SHARED_END)
    if start < 0 or end < start:
        return None
    return text[start + len(_SHARED_START):end]


def format_question(question: str) -> str:
    """The question stripped, with a final "?" added when it has none."""
    question = question.strip()
    return question if question.endswith("?") else question + "?"


def user_content(question: str, mode: str, max_queries: int = AgentConfig.max_queries,
                 delimiter: str = AgentConfig.query_delimiter) -> str:
    """The user message: instruction followed by the (normalised) question."""
    return instruction(mode, max_queries, delimiter) + format_question(question)


def invalid_action_note(mode: str) -> str:
    """Appended (info_mask 1) after a turn that had no complete action, so the policy can retry.

    It names the tags without writing them: a literal `<answer> ... </answer>` here would be read
    as the trajectory's answer by the reward (the bug of scoring the prompt's example answer).
    """
    what = "queries" if mode == "multi" else "query"
    return (f"\nThat step had no complete action. Close the search {what} with the closing search tag, "
            "or give the final answer between the opening and closing answer tags.\n")


def empty_search_note(mode: str) -> str:
    """Appended (info_mask 1) after a turn whose search block held no query: the block was closed, so
    the generic note would mislead. Tags are named, not written (see invalid_action_note)."""
    what = "queries" if mode == "multi" else "query"
    return (f"\nThat search had no query. Write the {what} between the opening and closing search tags, "
            "or give the final answer between the opening and closing answer tags.\n")


def agent_notes(mode: str) -> tuple[str, ...]:
    """Every note the tag-format rollout may append in `mode` (SFT builders drop rollouts holding one)."""
    return invalid_action_note(mode), empty_search_note(mode)


# The tool-call format (veRL's search tool): the policy calls tools through its chat template, so the
# corrective note is a user message and a malformed call's answer is its tool message.
TOOL_INVALID_NOTE = ("That step called no tool and gave no final answer. Call the search tool, or give the "
                     "final answer between the opening and closing answer tags.")


def tool_call_error(problem: str) -> str:
    """The tool message answering a malformed tool call: what was wrong, so the policy can fix it."""
    return f"Error: {problem}. No search was run for this call."
