"""Guide trajectories: gold evidence trajectories mixed into the RL groups (off-policy guidance).

With `agent.guide_file` (SFT conversations of rag_r1.sft.evidence, i.e. build_sft_from_evidence's
output), every training group whose prompt has a guide gets it in place of its last sample. Under
GRPO the guide, which reaches the gold answer from real retrieved passages, then carries a positive
advantage whenever the group's own samples fail, so a question the policy never solves still
teaches it something, and a group the policy always solves is contrasted with nothing worse
(its advantages stay 0). This is the cheap form of LUFFY's mixing (Yan et al. 2025, "Learning to
Reason under Off-Policy Guidance", arXiv:2504.14945), without its importance weighting: the
guide's old log-probs are the current policy's, not those of whatever wrote it, so its ratio is 1
at the first mini-batch (and at the only one of an on-policy update). PPO's clip then does not
engage, and the guide gets the plain advantage-weighted likelihood gradient of its tokens:
imitation, weighted by how much better it scored than the group. Only later mini-batches of the
same batch, after the weights moved, can clip it. The trainer's `algorithm.guides` switches
(weight of the policy's own rows, keeping a guide only in unsolved groups) and its
`adv/guide_positive_share` metric tell how much of a run's learning comes from them.

A guide's tokens are the SFT tokenization of its conversation (verl's render_pieces): the retrieved
`<information>` blocks get info_mask 1, as in a rollout, so state masking leaves them out of the loss.
The policy sampled none of them: their `rollout_log_probs` are 0, and the trainer leaves rows marked
`guided` out of its sampler/trainer log-prob comparison.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rag_r1.llm_agent.actions import parse_action
from rag_r1.llm_agent.generation import Trajectory
from verl.utils.dataset.sft_dataset import GPT, load_conversations, render_pieces


@dataclass(frozen=True)
class Guide:
    response: list[int]  # every token after the prompt, eos included
    info_mask: list[int]  # 1 on the retrieved blocks
    queries: list[list[str]] = field(default_factory=list)  # per search round


def load_guides(path: str | Path, tokenizer, queries_of) -> dict[tuple[int, ...], Guide]:
    """Guides of a conversation file by the token ids of their chat-templated prompt (what the RL
    data's prompt tokenizes to); `queries_of` splits a `<search>` block as the agent's mode does."""
    guides = {}
    for conversation in load_conversations(str(path)):
        if not conversation.is_agent_trajectory:
            raise ValueError(f"{path}: a guide must be one agent trajectory (one human turn)")
        (prompt, _), *pieces = render_pieces(conversation, tokenizer)
        response, info_mask = [], []
        for text, is_model in pieces:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            response += ids
            info_mask += [0 if is_model else 1] * len(ids)
        rounds = [parse_action(text) for role, text in conversation.turns[1:] if role == GPT]
        queries = [queries_of(content) for action, content in rounds if action == "search"]
        key = tuple(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        guides[key] = Guide(response, info_mask, queries)
    return guides


def as_trajectory(prompt: list[int], guide: Guide) -> Trajectory:
    """A finished trajectory that answered after the guide's searches."""
    searches = len(guide.queries)
    return Trajectory(prompt=list(prompt), response=list(guide.response), info_mask=list(guide.info_mask),
                      log_probs=[0.0] * len(guide.response), done=True, turns=searches + 1, search_calls=searches,
                      valid_actions=searches + 1, answered=True, queries=[list(q) for q in guide.queries],
                      retrieved_ids=[[] for _ in guide.queries])


def mix_guides(rows: list[Trajectory], groups: Sequence, guides: dict[tuple[int, ...], Guide]) -> list[bool]:
    """Replace, in place, the last row of every group (rows sharing a `groups` id, e.g. the GRPO uid)
    whose prompt has a guide; returns per row whether it is now a guide."""
    last_of = {group: i for i, group in enumerate(groups)}
    guided = [False] * len(rows)
    for i in last_of.values():
        guide = guides.get(tuple(rows[i].prompt))
        if guide is not None:
            rows[i] = as_trajectory(rows[i].prompt, guide)
            guided[i] = True
    return guided
