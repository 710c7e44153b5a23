"""A format-shaped reward: exact match plus small credits for following the agent's protocol.

The shaping terms are configurable weights (all 0 gives plain EM). It scores the response only:

    >>> w = FormatWeights(answer_tag=0.1, think_tag=0.05)
    >>> format_reward("<think> x </think><answer> Rome </answer>", {"target": "Paris"}, w)["score"]
    0.15000000000000002
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from rag_r1.reward.qa_em import em_check, extract_solution, golden_targets, search_blocks, strip_information

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


@dataclass(frozen=True)
class FormatWeights:
    em: float = 1.0  # reward of a correct final answer
    answer_tag: float = 0.0  # credit for a final answer that is wrong but well formed
    think_tag: float = 0.0  # credit for at least one complete <think> block
    search_tag: float = 0.0  # credit for at least one non-empty <search> query
    max_total: float = 1.0  # cap of the sum, so shaping never beats a correct answer


def format_reward(solution_str: str, ground_truth, weights: FormatWeights = FormatWeights()) -> dict:
    """`{"score", "em", "has_answer", "has_think", "has_search"}` for one response."""
    own_text = strip_information(solution_str)  # tags in retrieved text earn no credit
    answer = extract_solution(own_text)
    em = float(answer is not None and em_check(answer, golden_targets(ground_truth)))
    has_think = float(bool(_THINK.search(own_text)))
    has_search = float(any(q.strip() for q in search_blocks(own_text)))
    has_answer = float(answer is not None)
    score = em * weights.em if em else has_answer * weights.answer_tag
    score += has_think * weights.think_tag + has_search * weights.search_tag
    return {"score": min(score, weights.max_total), "em": em, "has_answer": has_answer,
            "has_think": has_think, "has_search": has_search}
