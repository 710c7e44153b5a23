"""Exact-match and F1 rewards on the final answer of a response (the RAG-R1 / Search-R1 metric).

Names follow Search-R1's `verl/utils/reward_score/qa_em.py`, so code written against it ports.
One deliberate difference: the text scored is the RESPONSE only. Search-R1 scored prompt +
response and skipped the prompt's example answer by counting tags; a response that never answered
then inherited the example's "Beijing". Here a response without `<answer>` has no answer.

    >>> compute_score_em("<think>...</think><answer> The Eiffel Tower </answer>", {"target": ["eiffel tower"]})
    1.0
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_INFORMATION = re.compile(r"<information>.*?</information>", re.DOTALL)
_SEARCH = re.compile(r"<search>(.*?)</search>", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace.

    >>> normalize_answer("  The  Beatles!  ")
    'beatles'
    """
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def strip_information(text: str) -> str:
    """The text without its `<information>` blocks: retrieved passages are not the policy's words,
    so a tag inside one must never count as the policy's answer.

    >>> strip_information("<search> q </search><information> <answer> x </answer> </information>!")
    '<search> q </search>!'
    """
    return _INFORMATION.sub("", text)


def information_text(text: str) -> str:
    """Everything retrieved into a response: the contents of its `<information>` blocks, joined.

    >>> information_text("<search> q </search><information> a </information> x <information> b </information>")
    ' a \\n b '
    """
    return "\n".join(block[len("<information>"):-len("</information>")] for block in _INFORMATION.findall(text))


def _golden_list(golden_answers: str | Sequence[str]) -> list[str]:
    return [golden_answers] if isinstance(golden_answers, str) else [str(g) for g in golden_answers]


def em_check(prediction: str, golden_answers: str | Sequence[str]) -> int:
    """1 when the normalized prediction equals any normalized golden answer, else 0.

    >>> em_check("the Beatles", ["Beatles", "Fab Four"])
    1
    """
    pred = normalize_answer(prediction)
    return int(any(pred == normalize_answer(g) for g in _golden_list(golden_answers)))


def subem_check(prediction: str, golden_answers: str | Sequence[str]) -> int:
    """1 when any normalized golden answer occurs inside the normalized prediction, else 0.

    >>> subem_check("it was the Beatles in 1963", "beatles")
    1
    """
    pred = normalize_answer(prediction)
    return int(any(normalize_answer(g) in pred for g in _golden_list(golden_answers)))


def f1_check(prediction: str, golden_answers: str | Sequence[str]) -> float:
    """Best token F1 (SQuAD style) of the normalized prediction against any golden answer.

    >>> f1_check("Paris France", "Paris")  # precision 1/2, recall 1/1 -> 2*0.5*1/1.5
    0.6666666666666666
    """
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for gold in _golden_list(golden_answers):
        gold_tokens = normalize_answer(gold).split()
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if common:
            precision, recall = common / len(pred_tokens), common / len(gold_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def extract_solution(solution_str: str) -> str | None:
    """The stripped content of the LAST complete `<answer>...</answer>` of a response, or None.

    >>> extract_solution("<answer> draft </answer> ... <answer> final </answer>")
    'final'
    """
    matches = _ANSWER.findall(solution_str)
    return matches[-1].strip() if matches else None


def search_blocks(text: str) -> list[str]:
    """The contents of the complete `<search>...</search>` blocks of a response: one per round.

    >>> search_blocks("<search> a, b </search> x <search> c </search> <search> cut")
    [' a, b ', ' c ']
    """
    return _SEARCH.findall(text)


def golden_targets(ground_truth) -> str | list[str]:
    """The golden answers of `{"target": str | list}` (a bare string or list is accepted too)."""
    target = ground_truth["target"] if isinstance(ground_truth, dict) else ground_truth
    if target is None:
        raise ValueError(f"ground_truth has no target: {ground_truth!r}")
    return target if isinstance(target, str) else [str(t) for t in target]


def compute_score_em(solution_str: str, ground_truth, format_score: float = 0.0, score: float = 1.0) -> float:
    """`score` for an exact match of the last answer, `format_score` for a wrong answer, 0 for none.

    >>> compute_score_em("no answer tag here", {"target": "Paris"})
    0.0
    """
    answer = extract_solution(solution_str)
    if answer is None:
        return 0.0
    return float(score) if em_check(answer, golden_targets(ground_truth)) else float(format_score)


def compute_score_f1(solution_str: str, ground_truth) -> float:
    """Token F1 of the last answer (0 without one).

    >>> compute_score_f1("<answer> Paris France </answer>", {"target": ["Paris"]})
    0.6666666666666666
    """
    answer = extract_solution(solution_str)
    return 0.0 if answer is None else f1_check(answer, golden_targets(ground_truth))
