"""SFT conversations from a question's evidence: search the supporting paragraphs by title, read what
the retrieval server really returns, answer with the gold answer.

The text follows docs/architecture.md ("The agent's text"): the human turn is the mode's
`user_content(question)`, each search is one gpt turn ending in `</search>`, each observation is
`"\\n<information>\\n" + <the mode's formatter> + "\\n</information>\\n"`, and the last gpt turn
holds the answer. Retrieved text only ever sits in observation turns. Everything that differs
between single and multi mode comes from the `AgentMode` (rag_r1.llm_agent.modes) passed in.

Round 1 searches what the question itself gives: single mode the first supporting title it names
(or, naming none, the question as asked); multi mode every title it names together, plus the
question as asked when it names fewer than two (a bridge question's second hop is often among
that query's passages). Each later round searches supporting titles not brought back yet: one
per round in single mode, up to the agent's `max_queries` in multi mode; a question is answered as soon as its
evidence is in. With a tokenizer, results are cut to the agent's `max_obs_length` tokens as the
rollout cuts them.

    >>> join_and(["A", "B", "C"])
    'A, B and C'
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from rag_r1.eval.runner import load_questions
from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.generation import INFO_CLOSE, INFO_OPEN, Retriever, observation_budget, shown_hits, unseen_depth
from rag_r1.llm_agent.modes import AgentMode, format_doc
from rag_r1.search.corpus import split_title

Cut = Callable[[str], str]  # formatted results -> what fits in one <information> block
_QUALIFIER = re.compile(r"\s*\([^)]*\)\s*$")  # "Kiss and Tell (1945 film)" -> "Kiss and Tell"
FINAL_THOUGHT = "The passages I found give the answer."
FINAL_THOUGHTS = ("fixed", "quote")  # the answer turn's thought: FINAL_THOUGHT, or the sentence holding the answer
QUOTE_WORDS = 30  # a longer sentence is quoted as this many words around the answer
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


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


def title_queries(question: EvidenceQuestion, titles: dict[str, str], mode: AgentMode) -> list[str]:
    """One query per supporting passage: its title as a query of the mode (`mode.as_query`, which the
    agent's split of the written `<search>` gives back whole), distinct, the ones the question names
    first."""
    keys = (mode.as_query(titles[pid]) for pid in question.supporting_ids)
    return mentioned_first(list(dict.fromkeys(k for k in keys if k)), question.question)


Shown = list[list[list[dict]]]  # per search round, per query, the passages the agent is shown


def shown_rounds(rounds: list[list[str]], hits_of: dict[str, list[dict]], topk: int, unseen: bool = False) -> Shown:
    """What the agent is shown after each round's queries, as the rollout shows it (`shown_hits`;
    with `unseen`, one trajectory's passages are never shown twice)."""
    seen: set[str] | None = set() if unseen else None
    return [shown_hits([hits_of[q] for q in queries], topk, seen) for queries in rounds]


def retrieved_ids(shown: Shown) -> set[str]:
    """Ids of every passage the rounds brought back."""
    return {hit["id"] for round_hits in shown for hits in round_hits for hit in hits}


def first_round(question: EvidenceQuestion, queries: list[str], mode: AgentMode) -> list[str]:
    """Round 1 searches only what the question itself gives, so the model is never taught to guess an
    entity it has not read yet: every title the question names (a comparison names both), up to the
    mode's queries per search; with fewer than two named (a bridge question, whose second hop is only
    learned by reading), the question itself goes in the same round, where it often finds that second
    hop at once. Single mode: the first title the question names, else the question."""
    named = [q for q in queries if named_in(q, question.question)]
    if len(named) < 2:
        named.append(mode.as_query(question.question))
    return named[:mode.queries_per_search]


def next_round(queries: list[str], searched: list[str], missing: list[str], mode: AgentMode) -> list[str]:
    """The titles to search next: those whose passage no round has brought back yet (`missing`, in
    `queries` order) and that were not searched already, up to the mode's queries per search. Empty
    when nothing is left to search."""
    todo = [q for q in queries if q in missing and q not in searched]
    return todo[:mode.queries_per_search]


def search_turn(round_no: int, rounds: list[list[str]], mode: AgentMode, whole: str = "") -> str:
    """The gpt turn of one search round: the mode's plan, then the `<search>` block. A plan names only
    this round's queries: later ones may be entities the model learns from this round's passages.
    The query equal to `whole` (the question itself) is named as such."""
    queries = rounds[round_no]
    names = join_and(["the whole question" if q == whole else q for q in queries])
    thought = mode.plan(names, round_no, len(rounds), len(queries))
    return f"<think> {thought} </think>\n<search> {mode.join_queries(queries)} </search>"


def observation(queries: list[str], hits: list[list[dict]], mode: AgentMode, cut: Cut | None = None
                ) -> tuple[str, set[str]]:
    """The `<information>` block exactly as the agent appends it after that search, and the ids of
    the passages whose whole `Doc i(...)` line is in it (a cut can drop the last ones)."""
    formatted = mode.format_observation(queries, hits)
    kept = cut(formatted) if cut else formatted
    seen = set()
    for query_hits in hits:
        for rank, hit in enumerate(query_hits, start=1):
            if mode.doc_as_observed(format_doc(rank, hit)) in kept:
                seen.add(hit["id"])
    return INFO_OPEN + kept + INFO_CLOSE, seen


def token_cut(tokenizer, max_obs_length: int) -> Cut:
    """The rollout's cut (GenerationManager): results keep their first `observation_budget` tokens.
    The kept tokens are decoded back to text, which a byte-level tokenizer re-encodes to the same
    tokens unless the cut splits a character."""
    budget = observation_budget(tokenizer, max_obs_length)

    def cut(text: str) -> str:
        ids = tokenizer.encode(text, add_special_tokens=False)
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


def evidence_quote(answer: str, passages: list[dict]) -> str | None:
    """`<title> says: <sentence>`: the first sentence of the passages (in their order) that holds the
    answer as whole words, a long one cut to QUOTE_WORDS words around it; None when no sentence does
    (a yes/no answer never does). The idea: copy the line that holds the answer, then take the answer
    out of it. On hotpotqa_closed it made SFT worse (docs/results.md): the model learned to quote and
    then answer with the quote's first words, which the quoted sentences often open with.

    >>> evidence_quote("Sonic", [{"contents": '"Jim Cummings"\\nHe is a voice actor. He voiced Sonic the Hedgehog.'}])
    'Jim Cummings says: He voiced Sonic the Hedgehog.'
    >>> evidence_quote("yes", [{"contents": '"A"\\nyes, it is.'}]) is None
    True
    """
    target = _words(answer)
    if not target or target in ("yes", "no"):
        return None
    for hit in passages:
        title, text = split_title(hit["contents"])
        for sentence in _SENTENCE_END.split(text):
            if f" {target} " not in f" {_words(sentence)} ":
                continue
            words = sentence.split()
            if len(words) > QUOTE_WORDS:
                span = len(target.split()) + 1  # one word of slack: "Jean-Luc" is one word here, two in `target`
                first = next(i for i in range(len(words)) if f" {target} " in f" {_words(' '.join(words[i:i + span]))} ")
                start = max(0, min(first - QUOTE_WORDS // 2, len(words) - QUOTE_WORDS))
                sentence = " ".join(words[start:start + QUOTE_WORDS])
            return f"{title} says: {sentence}"
    return None


def answer_turn(answer: str, thought: str = FINAL_THOUGHT) -> str:
    return f"<think> {thought} </think>\n<answer> {answer} </answer>"


def conversation(question: EvidenceQuestion, rounds: list[list[str]], shown: Shown,
                 mode: AgentMode, cut: Cut | None = None, final_thought: str = "fixed") -> tuple[dict, set[str]]:
    """The sharegpt conversation (human prompt, then per round a search and its observation, then the
    answer) and the ids of the passages its observations show in full. `final_thought` "quote" thinks
    the supporting sentence that holds the answer before answering (`evidence_quote`; FINAL_THOUGHT
    when none does)."""
    turns = [{"from": "human", "value": mode.user_content(question.question)}]
    whole = mode.as_query(question.question)
    seen: set[str] = set()
    for round_no, (queries, round_hits) in enumerate(zip(rounds, shown, strict=True)):
        block, in_full = observation(queries, round_hits, mode, cut)
        turns.append({"from": "gpt", "value": search_turn(round_no, rounds, mode, whole)})
        turns.append({"from": "observation", "value": block})
        seen |= in_full
    thought = None
    if final_thought == "quote":
        read = {hit["id"]: hit for round_hits in shown for hits in round_hits for hit in hits if hit["id"] in seen}
        thought = evidence_quote(question.answer, [read[pid] for pid in question.supporting_ids if pid in read])
    turns.append({"from": "gpt", "value": answer_turn(question.answer, thought or FINAL_THOUGHT)})
    return {"conversations": turns}, seen


def retrieve_all(retriever: Retriever, queries: list[str], topk: int, batch_size: int = 256) -> dict[str, list[dict]]:
    """Hits of every distinct query, `batch_size` queries per request."""
    distinct = list(dict.fromkeys(queries))
    hits_of: dict[str, list[dict]] = {}
    for start in tqdm(range(0, len(distinct), batch_size), desc="retrieve", unit="request"):
        batch = distinct[start:start + batch_size]
        hits_of.update(zip(batch, retriever.retrieve(batch, topk), strict=True))
    return hits_of


def plan_all(questions: list[EvidenceQuestion], titles: dict[str, str], retriever: Retriever, mode: AgentMode,
             topk: int = AgentConfig.topk, batch_size: int = 256, unseen: bool = False
             ) -> tuple[list[list[list[str]]], list[Shown]]:
    """(the search rounds of each question, what each round shows it). Round 1 comes from the question
    (`first_round`); each later round searches supporting titles the rounds so far did not bring back
    (`next_round`), so a question whose first round already found all its evidence is answered after
    it. The queries of every question's next round go to the server together, in batches. `unseen`:
    as agent.unseen_passages."""
    queries = [title_queries(q, titles, mode) for q in questions]
    plans = [[first_round(q, qs, mode)] for q, qs in zip(questions, queries)]
    depth = topk
    if unseen:  # every round but the first searches a title not searched before: at most 1 + titles rounds
        rounds = 1 + max((len(qs) for qs in queries), default=0)
        depth = unseen_depth(topk, topk * mode.queries_per_search * (rounds - 1), mode.queries_per_search)
    hits_of: dict[str, list[dict]] = {}
    open_rows = list(range(len(questions)))
    while open_rows:
        wanted = [query for i in open_rows for query in plans[i][-1] if query not in hits_of]
        hits_of.update(retrieve_all(retriever, wanted, depth, batch_size))
        still_open = []
        for i in open_rows:
            found = retrieved_ids(shown_rounds(plans[i], hits_of, topk, unseen))
            missing = [mode.as_query(titles[pid]) for pid in questions[i].supporting_ids if pid not in found]
            searched = [query for r in plans[i] for query in r]
            following = next_round(queries[i], searched, missing, mode)
            if following:
                plans[i].append(following)
                still_open.append(i)
        open_rows = still_open
    return plans, [shown_rounds(plan, hits_of, topk, unseen) for plan in plans]


def build_dataset(questions: list[EvidenceQuestion], titles: dict[str, str], retriever: Retriever, mode: AgentMode,
                  topk: int = AgentConfig.topk, batch_size: int = 256, cut: Cut | None = None,
                  final_thought: str = "fixed", unseen: bool = False) -> tuple[list[dict], dict[str, int]]:
    """(conversations, counts): a question is dropped when its rounds did not retrieve all its
    supporting passages, or retrieved them but the observation cut left one of them out.
    `final_thought`: see `conversation`; with "quote", `quoted` counts the answers that quote one.
    `unseen`: as agent.unseen_passages (a passage is shown once per conversation)."""
    if final_thought not in FINAL_THOUGHTS:
        raise ValueError(f"final_thought={final_thought!r}: expected one of {FINAL_THOUGHTS}")
    plans, shown = plan_all(questions, titles, retriever, mode, topk, batch_size, unseen)
    samples = []
    stats = {"questions": len(questions), "kept": 0, "dropped_missing_evidence": 0, "dropped_evidence_cut": 0,
             "quoted": 0}
    counting = CountingCut(cut if cut is not None else (lambda text: text))
    for q, rounds, rounds_shown in zip(questions, plans, shown):
        if not set(q.supporting_ids) <= retrieved_ids(rounds_shown):
            stats["dropped_missing_evidence"] += 1
            continue
        sample, seen = conversation(q, rounds, rounds_shown, mode, counting, final_thought)
        if not set(q.supporting_ids) <= seen:
            stats["dropped_evidence_cut"] += 1
            continue
        samples.append(sample)
        stats["kept"] += 1
        stats["quoted"] += FINAL_THOUGHT not in sample["conversations"][-1]["value"]
    stats["observations_cut"] = counting.count
    return samples, stats
