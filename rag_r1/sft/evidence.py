"""SFT conversations from a question's evidence: search the supporting paragraphs by title, read what
the retrieval server really returns, answer with the gold answer.

The text follows docs/architecture.md ("The agent's text"): the human turn is
`prompts.user_content(question, mode)`, each search is one gpt turn ending in `</search>`, each
observation is `"\\n<information>\\n" + <the agent's formatter for the mode> + "\\n</information>\\n"`,
and the last gpt turn holds the answer. Retrieved text only ever sits in observation turns.

Round 1 searches what the question itself gives: single mode the first supporting title it names
(or, naming none, the question as asked); multi mode every title it names together, plus the
question as asked when it names fewer than two (a bridge question's second hop is often among
that query's passages). Each later round searches supporting titles not brought back yet: one
per round in single mode, up to `max_queries` in multi mode; a question is answered as soon as its
evidence is in. With a tokenizer, results are cut to the agent's `max_obs_length` tokens as the
rollout cuts them.

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
    """Whether the question names the title as whole words (its "(...)" qualifier, case and
    punctuation ignored: the multi-mode query "Paris Texas" is named by "Paris, Texas").

    >>> named_in("Paris Texas", "Is Paris, Texas big?"), named_in("Everest", "Who climbed Mount Everest?")
    (True, True)
    >>> named_in("Mount Everest", "Who climbed Everest?"), named_in("Ada", "Was Adam first?")
    (False, False)
    """
    return f" {_words(_QUALIFIER.sub('', title))} " in f" {_words(question)} "


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def title_queries(question: EvidenceQuestion, titles: dict[str, str], mode: str, delimiter: str = ",") -> list[str]:
    """One query per supporting passage: its title, distinct, the ones the question names first. In
    multi mode a delimiter inside a title becomes a space, so the agent's split of the written
    `<search>` gives these queries back."""
    keys = (as_query(titles[pid], mode, delimiter) for pid in question.supporting_ids)
    return mentioned_first(list(dict.fromkeys(k for k in keys if k)), question.question)


def as_query(text: str, mode: str, delimiter: str = ",") -> str:
    """A title or the question as one query of the mode: stripped, and in multi mode with the
    delimiter made a space, so the agent's split of the written `<search>` gives it back whole."""
    return " ".join(text.replace(delimiter, " ").split()) if mode == "multi" else text.strip()


def retrieved_ids(rounds: list[list[str]], hits_of: dict[str, list[dict]]) -> set[str]:
    """Ids of every passage the rounds' queries brought back."""
    return {hit["id"] for queries in rounds for query in queries for hit in hits_of[query]}


def first_round(question: EvidenceQuestion, queries: list[str], mode: str, max_queries: int = 3,
                delimiter: str = ",") -> list[str]:
    """Round 1 searches only what the question itself gives, so the model is never taught to guess an
    entity it has not read yet. Single: the first title the question names, else the question.
    Multi: every title it names (a comparison names both); with fewer than two named (a bridge
    question, whose second hop is only learned by reading), the question itself goes in the same
    round, where it often finds that second hop at once."""
    named = [q for q in queries if named_in(q, question.question)]
    whole = as_query(question.question, mode, delimiter)
    if mode == "single":
        return named[:1] or [whole]
    return named[:max_queries] if len(named) >= 2 else (named + [whole])[:max_queries]


def next_round(queries: list[str], searched: list[str], missing: list[str], mode: str, max_queries: int = 3
               ) -> list[str]:
    """The titles to search next: those whose passage no round has brought back yet (`missing`, in
    `queries` order) and that were not searched already; one (single) or up to `max_queries` (multi).
    Empty when nothing is left to search."""
    todo = [q for q in queries if q in missing and q not in searched]
    return todo[:1] if mode == "single" else todo[:max_queries]


def search_turn(round_no: int, rounds: list[list[str]], mode: str, delimiter: str = ",", whole: str = "") -> str:
    """The gpt turn of one search round: a short plan, then the `<search>` block. A plan names only
    this round's queries: later ones may be entities the model learns from this round's passages.
    The query equal to `whole` (the question itself) is named as such. The two modes word their
    plans differently from the first word on, so a model trained on both follows the instruction it
    is given instead of one plan for both (a shared opening taught a 135M model one query per round
    in multi mode too)."""
    queries = rounds[round_no]
    names = join_and(["the whole question" if q == whole else q for q in queries])
    if mode == "multi":
        together = " in parallel" if len(queries) > 1 else ""
        thought = f"{'Next I' if round_no > 0 else 'I'} will search {names}{together}."
    elif round_no > 0:
        thought = f"Next I need to look up {names}."
    elif len(rounds) > 1:
        thought = f"To answer this I will first look up {names}."
    else:
        thought = f"To answer this I need to look up {names}."
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
    whole = as_query(question.question, mode, delimiter)
    seen: set[str] = set()
    for round_no, queries in enumerate(rounds):
        block, shown = observation(queries, [hits_of[q] for q in queries], mode, cut)
        turns.append({"from": "gpt", "value": search_turn(round_no, rounds, mode, delimiter, whole)})
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


def plan_all(questions: list[EvidenceQuestion], titles: dict[str, str], retriever: Retriever, mode: str,
             topk: int = 3, max_queries: int = 3, delimiter: str = ",", batch_size: int = 256,
             ) -> tuple[list[list[list[str]]], dict[str, list[dict]]]:
    """(the search rounds of each question, the hits of every query). Round 1 comes from the question
    (`first_round`); each later round searches supporting titles the rounds so far did not bring back
    (`next_round`), so a question whose first round already found all its evidence is answered after
    it. The queries of every question's next round go to the server together, in batches."""
    queries = [title_queries(q, titles, mode, delimiter) for q in questions]
    plans = [[first_round(q, qs, mode, max_queries, delimiter)] for q, qs in zip(questions, queries)]
    hits_of: dict[str, list[dict]] = {}
    open_rows = list(range(len(questions)))
    while open_rows:
        wanted = [query for i in open_rows for query in plans[i][-1] if query not in hits_of]
        hits_of.update(retrieve_all(retriever, wanted, topk, batch_size))
        still_open = []
        for i in open_rows:
            found = retrieved_ids(plans[i], hits_of)
            missing = [as_query(titles[pid], mode, delimiter) for pid in questions[i].supporting_ids
                       if pid not in found]
            searched = [query for r in plans[i] for query in r]
            following = next_round(queries[i], searched, missing, mode, max_queries)
            if following:
                plans[i].append(following)
                still_open.append(i)
        open_rows = still_open
    return plans, hits_of


def build_dataset(questions: list[EvidenceQuestion], titles: dict[str, str], retriever: Retriever, mode: str,
                  topk: int = 3, max_queries: int = 3, delimiter: str = ",", batch_size: int = 256,
                  cut: Cut | None = None) -> tuple[list[dict], dict[str, int]]:
    """(conversations, counts): a question is dropped when its rounds did not retrieve all its
    supporting passages, or retrieved them but the observation cut left one of them out."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    plans, hits_of = plan_all(questions, titles, retriever, mode, topk, max_queries, delimiter, batch_size)
    samples = []
    stats = {"questions": len(questions), "kept": 0, "dropped_missing_evidence": 0, "dropped_evidence_cut": 0}
    counting = CountingCut(cut if cut is not None else (lambda text: text))
    for q, rounds in zip(questions, plans):
        if not set(q.supporting_ids) <= retrieved_ids(rounds, hits_of):
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
