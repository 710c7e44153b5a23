"""SFT conversations from a question's evidence: search the supporting paragraphs by title, read what
the retrieval server really returns, answer with the gold answer.

The text follows docs/architecture.md ("The agent's text"): the human turn is
`prompts.user_content(question, mode)`, each search is one gpt turn ending in `</search>`, each
observation is `"\\n<information>\\n" + <the agent's formatter for the mode> + "\\n</information>\\n"`,
and the last gpt turn holds the answer. Retrieved text only ever sits in observation turns.

Multi mode searches all titles in one round (`max_queries` per round, more rounds only when a
question has more supporting titles than that); single mode searches one title per round. With a
tokenizer, results are cut to the agent's `max_obs_length` tokens as the rollout cuts them.

    >>> join_and(["A", "B", "C"])
    'A, B and C'
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from rag_r1.eval.runner import load_questions

from rag_r1.llm_agent.generation import INFO_CLOSE, INFO_OPEN, Retriever
from rag_r1.llm_agent.modes import format_doc, format_multi, format_single
from rag_r1.llm_agent.prompts import user_content

MODES = ("single", "multi")
Cut = Callable[[str], str]  # formatted results -> what fits in one <information> block
_QUALIFIER = re.compile(r"\s*\([^)]*\)\s*$")  # "Kiss and Tell (1945 film)" -> "Kiss and Tell"
FINAL_THOUGHT = "The passages I found give the answer."


@dataclass(frozen=True)
class EvidenceQuestion:
    id: str
    question: str
    answer: str
    supporting_ids: tuple[str, ...]


def read_evidence_questions(path: str | Path, titles: dict[str, str]) -> tuple[list[EvidenceQuestion], int]:
    """Questions of a file that have supporting_ids (each of them in the corpus, whose `titles` by id
    are given), and how many rows had none."""
    questions, without = [], 0
    for row in load_questions(path):
        support = row.get("supporting_ids") or []
        if not support:
            without += 1
            continue
        missing = [pid for pid in support if pid not in titles]
        if missing:
            raise ValueError(f"{path}: question {row['id']!r} names supporting_ids {missing} that the corpus lacks")
        if not row["golden_answers"]:
            raise ValueError(f"{path}: question {row['id']!r} has an empty golden_answers list")
        questions.append(EvidenceQuestion(row["id"], row["question"], row["golden_answers"][0], tuple(support)))
    return questions, without


def join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def mentioned_first(titles: list[str], question: str) -> list[str]:
    """Titles the question names (ignoring a "(...)" qualifier) before the others, order kept otherwise:
    a bridge question names its first hop, and the second is only learned by reading it.

    >>> mentioned_first(["Shirley Temple", "Kiss and Tell (1945 film)"], "Who starred in Kiss and Tell?")
    ['Kiss and Tell (1945 film)', 'Shirley Temple']
    """
    return sorted(titles, key=lambda t: not named_in(t, question))


def named_in(title: str, question: str) -> bool:
    """Whether the question names the title (its "(...)" qualifier ignored, case ignored)."""
    return _QUALIFIER.sub("", title).strip().lower() in question.lower()


def title_queries(question: EvidenceQuestion, titles: dict[str, str], mode: str, delimiter: str = ",") -> list[str]:
    """One query per supporting passage: its title, distinct, the ones the question names first. In
    multi mode a delimiter inside a title becomes a space, so the agent's split of the written
    `<search>` gives these queries back."""
    distinct = list(dict.fromkeys(t.strip() for t in (titles[pid] for pid in question.supporting_ids) if t.strip()))
    queries = mentioned_first(distinct, question.question)
    if mode == "multi":
        queries = list(dict.fromkeys(" ".join(q.replace(delimiter, " ").split()) for q in queries))
    return queries


def plan_rounds(queries: list[str], mode: str, question: str, max_queries: int = 3) -> list[list[str]]:
    """The queries of each search round. Single: one per round. Multi: round 1 searches together
    every title the question names (a comparison question names both); titles it does not name
    (a bridge question's second hop, only learned by reading round 1's passages) come in later
    rounds, so the model is never taught to guess an entity it has not read yet. With no title
    named, round 1 takes the first one alone. At most `max_queries` per round."""
    if mode == "single":
        return [[q] for q in queries]
    named = [q for q in queries if named_in(q, question)] or queries[:1]
    later = [q for q in queries if q not in named]
    return [part[i:i + max_queries] for part in (named, later) for i in range(0, len(part), max_queries)]


def search_turn(round_no: int, rounds: list[list[str]], mode: str, delimiter: str = ",") -> str:
    """The gpt turn of one search round: a short plan, then the `<search>` block. A plan names only
    this round's queries: later ones may be entities the model learns from this round's passages."""
    queries = rounds[round_no]
    if round_no > 0:
        thought = f"Next I need to look up {join_and(queries)}."
    elif len(rounds) > 1:
        thought = f"To answer this I will first look up {join_and(queries)}."
    else:
        thought = f"To answer this I need to look up {join_and(queries)}."
        if len(queries) > 1:
            thought += " I will search for them together."
    content = f"{delimiter} ".join(queries) if mode == "multi" else queries[0]
    return f"<think> {thought} </think>\n<search> {content} </search>"


def observation(queries: list[str], hits: list[list[dict]], mode: str, cut: Cut | None = None) -> tuple[str, set[str]]:
    """The `<information>` block exactly as the agent appends it after that search, and the ids of
    the passages whose whole `Doc i(...)` line is in it (a cut can drop the last ones)."""
    formatted = format_multi(queries, hits) if mode == "multi" else format_single(queries, hits)
    kept = cut(formatted) if cut else formatted
    seen = set()
    for query_hits in hits:
        for rank, hit in enumerate(query_hits, start=1):
            line = format_doc(rank, hit)
            # Multi mode writes the lines inside JSON strings; JSON escapes character by character.
            if (json.dumps(line, ensure_ascii=False)[1:-1] if mode == "multi" else line) in kept:
                seen.add(hit["id"])
    return INFO_OPEN + kept + INFO_CLOSE, seen


def token_cut(tokenizer, max_obs_length: int) -> Cut:
    """The rollout's cut (GenerationManager): results keep the first `max_obs_length` tokens minus
    the two tags' tokens. The kept tokens are decoded back to text, which a byte-level tokenizer
    re-encodes to the same tokens unless the cut splits a character."""
    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    budget = max_obs_length - len(encode(INFO_OPEN)) - len(encode(INFO_CLOSE))
    if budget < 1:
        raise ValueError(f"max_obs_length={max_obs_length} leaves no room inside the <information> tags")

    def cut(text: str) -> str:
        ids = encode(text)
        return text if len(ids) <= budget else tokenizer.decode(ids[:budget])
    return cut


class CountingCut:
    """A cut that counts the observations it shortened."""

    def __init__(self, cut: Cut):
        self.cut, self.count = cut, 0

    def __call__(self, text: str) -> str:
        kept = self.cut(text)
        self.count += kept != text
        return kept


def answer_turn(answer: str) -> str:
    return f"<think> {FINAL_THOUGHT} </think>\n<answer> {answer} </answer>"


def conversation(question: EvidenceQuestion, rounds: list[list[str]], hits_of: dict[str, list[dict]],
                 mode: str, max_queries: int = 3, delimiter: str = ",", cut: Cut | None = None,
                 ) -> tuple[dict, set[str]]:
    """The sharegpt conversation (human prompt, then per round a search and its observation, then the
    answer) and the ids of the passages its observations show in full."""
    turns = [{"from": "human", "value": user_content(question.question, mode, max_queries, delimiter)}]
    seen: set[str] = set()
    for round_no, queries in enumerate(rounds):
        block, shown = observation(queries, [hits_of[q] for q in queries], mode, cut)
        turns.append({"from": "gpt", "value": search_turn(round_no, rounds, mode, delimiter)})
        turns.append({"from": "observation", "value": block})
        seen |= shown
    turns.append({"from": "gpt", "value": answer_turn(question.answer)})
    return {"conversations": turns}, seen


def retrieve_all(retriever: Retriever, queries: list[str], topk: int, batch_size: int = 256) -> dict[str, list[dict]]:
    """Hits of every distinct query, `batch_size` queries per request."""
    distinct = list(dict.fromkeys(queries))
    hits_of: dict[str, list[dict]] = {}
    for start in tqdm(range(0, len(distinct), batch_size), desc="retrieve", unit="request"):
        batch = distinct[start:start + batch_size]
        hits_of.update(zip(batch, retriever.retrieve(batch, topk), strict=True))
    return hits_of


def build_dataset(questions: list[EvidenceQuestion], titles: dict[str, str], retriever: Retriever, mode: str,
                  topk: int = 3, max_queries: int = 3, delimiter: str = ",", batch_size: int = 256,
                  cut: Cut | None = None) -> tuple[list[dict], dict[str, int]]:
    """(conversations, counts): a question is dropped when its rounds did not retrieve all its
    supporting passages, or retrieved them but the observation cut left one of them out."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    plans = [plan_rounds(title_queries(q, titles, mode, delimiter), mode, q.question, max_queries) for q in questions]
    hits_of = retrieve_all(retriever, [query for rounds in plans for r in rounds for query in r], topk, batch_size)
    samples = []
    stats = {"questions": len(questions), "kept": 0, "dropped_missing_evidence": 0, "dropped_evidence_cut": 0}
    counting = CountingCut(cut if cut is not None else (lambda text: text))
    for q, rounds in zip(questions, plans):
        found = {hit["id"] for r in rounds for query in r for hit in hits_of[query]}
        if not rounds or not set(q.supporting_ids) <= found:
            stats["dropped_missing_evidence"] += 1
            continue
        sample, seen = conversation(q, rounds, hits_of, mode, max_queries, delimiter, counting)
        if not set(q.supporting_ids) <= seen:
            stats["dropped_evidence_cut"] += 1
            continue
        samples.append(sample)
        stats["kept"] += 1
    stats["observations_cut"] = counting.count
    return samples, stats
