"""RAG-R1's reward: `compute_score(data_source, solution_str, ground_truth, extra_info)`.

The trainer loads it as `custom_reward_function.path=rag_r1.reward:compute_score`. Each
`data_source` maps to a scorer in REWARDS; a row may pick another registered scorer through
`extra_info["reward"]` ("em", "f1" or "format"; "format" reads optional weights from
`extra_info["format_weights"]`). The result is a dict: "score" plus numbers logged as reward/<key>.
With `round_cost > 0` (`custom_reward_function.reward_kwargs.round_cost`) a rewarded answer loses that
fraction of its score for every search round after the first: EM alone pays a two-round answer of a
question one parallel round could settle as much as a one-round one, so nothing in the paper's reward
favours multi-query parallelism over one query at a time.
With `agent.evidence_reward_weight > 0` (experiments; off by default) the agent loop puts
`retrieved_ids` and the weight into extra_info, and rows with `supporting_ids` get
weight x evidence recall added to their score.
Every scorer sees the response without its `<information>` blocks (retrieved text is not the
policy's; an `<answer>` tag inside a passage must not score).

    >>> compute_score("hotpotqa", "<answer> Paris </answer>", {"target": ["Paris"]})["score"]
    1.0
"""
from __future__ import annotations

from collections.abc import Callable

from rag_r1.reward.evidence import evidence_by_round
from rag_r1.reward.format import FormatWeights, format_reward
from rag_r1.reward.qa_em import compute_score_em, compute_score_f1, extract_solution, search_blocks, strip_information

Scorer = Callable[[str, object, dict], dict]


def _em(solution_str: str, ground_truth, extra_info: dict) -> dict:
    em = compute_score_em(solution_str, ground_truth)
    # "em" survives a round cost, which lowers only "score"
    return {"score": em, "em": em,
            "f1": compute_score_f1(solution_str, ground_truth),
            "answered": float(extract_solution(solution_str) is not None)}


def _f1(solution_str: str, ground_truth, extra_info: dict) -> dict:
    return {"score": compute_score_f1(solution_str, ground_truth),
            "em": compute_score_em(solution_str, ground_truth),
            "answered": float(extract_solution(solution_str) is not None)}


def _format(solution_str: str, ground_truth, extra_info: dict) -> dict:
    weights = FormatWeights(**(extra_info.get("format_weights") or {}))
    return format_reward(solution_str, ground_truth, weights)


SCORERS: dict[str, Scorer] = {"em": _em, "f1": _f1, "format": _format}

# data_source -> scorer name. Every QA set of the paper is scored by exact match.
REWARDS: dict[str, str] = {
    source: "em"
    for source in ("hotpotqa", "hotpotqa_mq", "nq", "triviaqa", "popqa", "2wikimultihopqa", "musique",
                   "bamboogle", "hotpotqa_closed", "closed_multihop", "demo")
}


def register(data_source: str, scorer: str) -> None:
    """Score `data_source` with the scorer named `scorer` (a key of SCORERS)."""
    if scorer not in SCORERS:
        raise KeyError(f"unknown scorer {scorer!r}; known: {sorted(SCORERS)}")
    REWARDS[data_source] = scorer


def compute_score(data_source: str, solution_str: str, ground_truth, extra_info: dict | None = None,
                  scorer: str | None = None, format_weights: dict | None = None, round_cost: float = 0.0) -> dict:
    """`scorer`, `format_weights` and `round_cost` come from the run's config
    (`custom_reward_function.reward_kwargs`): the scorer of every row, the weights of the format
    scorer, and the share of a rewarded score lost per search round after the first; a row's own
    `extra_info["reward"]` and `extra_info["format_weights"]` still win over the first two.

    >>> compute_score("hotpotqa", "<search> a, b </search><answer> Paris </answer>", {"target": ["Paris"]},
    ...               round_cost=0.1)["score"]
    1.0
    >>> compute_score("hotpotqa", "<search> a </search><search> b </search><answer> Paris </answer>",
    ...               {"target": ["Paris"]}, round_cost=0.1)["score"]
    0.9

    >>> compute_score("hotpotqa", "<answer> Paris France </answer>", {"target": ["Paris"]}, scorer="f1")["score"]
    0.6666666666666666
    """
    extra_info = extra_info or {}
    if format_weights and "format_weights" not in extra_info:
        extra_info = {**extra_info, "format_weights": dict(format_weights)}
    name = extra_info.get("reward") or scorer or REWARDS.get(data_source)
    if name is None:
        raise KeyError(f"no reward registered for data_source={data_source!r}; known: {sorted(REWARDS)} "
                       f"(add one with rag_r1.reward.register)")
    if name not in SCORERS:
        raise KeyError(f"extra_info['reward']={name!r} is not a scorer; known: {sorted(SCORERS)}")
    if round_cost < 0:
        raise ValueError(f"round_cost={round_cost}: expected a share >= 0")
    policy_text = strip_information(solution_str)
    result = SCORERS[name](policy_text, ground_truth, extra_info)
    if round_cost > 0:
        rounds = len(search_blocks(policy_text))
        result = {**result, "rounds": float(rounds),
                  "score": result["score"] * max(0.0, 1.0 - round_cost * max(0, rounds - 1))}
    weight = float(extra_info.get("evidence_reward_weight") or 0.0)
    supporting = extra_info.get("supporting_ids")
    if weight > 0 and supporting is not None and len(supporting) > 0:
        curve = evidence_by_round(extra_info.get("retrieved_ids") or [], list(supporting))
        recall = curve[-1] if curve else 0.0
        result = {**result, "evidence_recall": recall, "score": result["score"] + weight * recall}
    return result

