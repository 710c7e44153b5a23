"""PPO / GRPO math: advantages, KL penalties, losses and their aggregation, KL controllers.

Pure tensor functions over response-aligned tensors of shape ``(bs, response_length)``; names,
arguments and meanings follow veRL's ``core_algos`` so a veRL user recognises them. Variants are
looked up by name (advantage estimators, KL estimators, loss aggregation modes), so the trainer
passes config strings through and never branches on them. Imports only torch and numpy.

Papers:
- PPO: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347.
- GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation", arXiv:1506.02438.
- Dual-clip PPO: Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL", arXiv:1912.09729.
- GRPO: Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300; the unnormalised variant:
  Liu et al. 2025, "Understanding R1-Zero-Like Training" (Dr. GRPO), arXiv:2503.20783.
- Asymmetric clipping (clip-higher) and token-mean: Yu et al. 2025, "DAPO", arXiv:2503.14476.
- KL estimators k1/k2/k3: J. Schulman, "Approximating KL Divergence", 2020 (joschu.net/blog/kl-approx.html).
- Adaptive KL coefficient: Ziegler et al. 2019, "Fine-Tuning Language Models from Human
  Preferences", arXiv:1909.08593.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from verl.utils import torch_functional as verl_F

__all__ = [
    "register_adv_est",
    "get_adv_estimator_fn",
    "adv_estimator_needs_critic",
    "compute_gae_advantage_return",
    "compute_grpo_outcome_advantage",
    "varied_groups",
    "guided_rows",
    "sampled_token_mask",
    "keep_unsolved_guides",
    "weight_rows",
    "positive_advantage_share",
    "rollout_logprob_diff",
    "KL_ESTIMATORS",
    "kl_penalty",
    "apply_kl_penalty",
    "agg_loss",
    "agg_loss_normalizer",
    "state_mask",
    "batch_state_mask",
    "compute_policy_loss",
    "compute_value_loss",
    "compute_entropy_loss",
    "FixedKLController",
    "AdaptiveKLController",
    "KL_CONTROLLERS",
    "get_kl_controller",
]

# ----------------------------------------------------------------------------- advantage registry

_ADV_ESTIMATORS: dict[str, Callable] = {}
_NEEDS_CRITIC: set[str] = set()


def register_adv_est(name: str, needs_critic: bool = False) -> Callable[[Callable], Callable]:
    """Decorator registering an advantage estimator under ``name`` (``algorithm.adv_estimator``).

    ``needs_critic`` tells the trainer whether it must build a critic and fill ``values``.
    """

    def decorate(fn: Callable) -> Callable:
        if name in _ADV_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _ADV_ESTIMATORS[name] = fn
        if needs_critic:
            _NEEDS_CRITIC.add(name)
        return fn

    return decorate


def get_adv_estimator_fn(name: str) -> Callable:
    """The estimator registered as ``name``; every estimator accepts (and ignores) extra keywords,
    so the trainer calls any of them with the same keyword set."""
    if name not in _ADV_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: {sorted(_ADV_ESTIMATORS)}")
    return _ADV_ESTIMATORS[name]


def adv_estimator_needs_critic(name: str) -> bool:
    get_adv_estimator_fn(name)  # raise on unknown names here too
    return name in _NEEDS_CRITIC


@register_adv_est("gae", needs_critic=True)
def compute_gae_advantage_return(
    token_level_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
    **_unused,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation by a reverse scan over the response.

    token_level_rewards, values, response_mask: (bs, response_length).
    Returns (advantages, returns), both (bs, response_length): ``returns`` = raw advantages +
    values; ``advantages`` are whitened over the masked-in tokens. Both are 0 where the mask is 0.

    Masked-out positions are skipped, not treated as time steps: the value and the running
    advantage of the next masked-in token pass through them unchanged (as in current veRL). So when
    the mask is ``response_mask * (1 - info_mask)`` the retrieved ``<information>`` tokens, whose
    values the critic was never trained on, neither enter a TD error nor add discounting, and the
    ``</search>`` token bootstraps from the first token generated after the block. Trailing padding
    passes through a zero, so the last real token gets delta = r - V. Rewards placed on masked
    positions are ignored; reward managers put the score on the last generated token.
    """
    with torch.no_grad():
        valid = response_mask.bool()
        bs, length = values.shape
        next_value = torch.zeros(bs, dtype=values.dtype, device=values.device)
        running = torch.zeros_like(next_value)
        raw = torch.zeros_like(values)
        for t in reversed(range(length)):
            delta = token_level_rewards[:, t] + gamma * next_value - values[:, t]
            # where() rather than mask arithmetic: a NaN/inf value on a padding position must
            # not leak into every earlier token through the recursion (0 * inf = NaN).
            running = torch.where(valid[:, t], delta + gamma * lam * running, running)
            next_value = torch.where(valid[:, t], values[:, t], next_value)
            raw[:, t] = running
        zero = torch.zeros_like(values)
        returns = torch.where(valid, raw + values, zero)
        advantages = torch.where(valid, verl_F.masked_whiten(raw, valid), zero)
    return advantages, returns


@register_adv_est("grpo")
def compute_grpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    **_unused,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative outcome advantage (GRPO): one scalar per response, broadcast over its tokens.

    token_level_rewards, response_mask: (bs, response_length); index: (bs,) prompt ids (``uid``),
    rows with equal ids form a group. Score = sum of the row's token rewards;
    advantage = (score - group mean) / (group std + epsilon), with the unbiased std as in veRL,
    or just score - group mean when ``norm_adv_by_std_in_grpo`` is False (Dr. GRPO).
    A group of one has mean 0 and std 1, so its advantage is its raw score (over 1 + epsilon).
    Returns (advantages, returns), equal, (bs, response_length), 0 where the mask is 0.
    """
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        if isinstance(index, torch.Tensor):
            index = index.tolist()  # 0-dim tensors hash by identity, which would make every row its own group
        groups: dict = defaultdict(list)
        for row, uid in enumerate(index):
            groups[uid].append(row)
        mean = torch.zeros_like(scores)
        std = torch.ones_like(scores)
        for rows in groups.values():
            if len(rows) > 1:
                group = scores[rows]
                mean[rows] = group.mean()
                std[rows] = group.std(unbiased=True)
        centred = scores - mean
        adv = centred / (std + epsilon) if norm_adv_by_std_in_grpo else centred
        adv = adv.unsqueeze(-1) * response_mask.to(adv.dtype)
    return adv, adv


def scale_negative_advantages(advantages: torch.Tensor, scale: float) -> torch.Tensor:
    """Negative advantages times `scale`, the others as they are (any shape).

    >>> scale_negative_advantages(torch.tensor([[1.5, 1.5], [-0.5, -0.5]]), 0.5).tolist()
    [[1.5, 1.5], [-0.25, -0.25]]
    """
    return torch.where(advantages < 0, advantages * scale, advantages)


def varied_groups(index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rows of the groups worth training on (DAPO's dynamic sampling): a group whose rows all have the
    same `values` gets zero group-relative advantage everywhere and only dilutes the batch.

    index: (bs,) group ids (``uid``); values: (bs,) the filter metric per row. Returns a (bs,) bool
    mask, true on every row of a group whose values are not all equal, and on groups of one row
    (nothing to compare them with), as veRL's DAPO trainer keeps them.

    >>> varied_groups(np.array(["a", "a", "b", "b", "c"]), np.array([1.0, 0.0, 1.0, 1.0, 0.0])).tolist()
    [True, True, False, False, True]
    """
    groups: dict = defaultdict(list)
    for row, uid in enumerate(index):
        groups[uid].append(row)
    keep = np.zeros(len(index), dtype=bool)
    for rows in groups.values():
        group = np.asarray(values)[rows]
        if len(rows) == 1 or np.ptp(group) > 0:
            keep[rows] = True
    return keep


# ----------------------------------------------------------------------------- guided rows
#
# A rollout loop may put off-policy demonstrations ("guides", e.g. gold trajectories) in a GRPO
# group and mark their rows in the non-tensor column `guided`. These functions tell what the
# policy's own samples and what the guides contribute.


def guided_rows(non_tensor_batch: dict, rows: int) -> np.ndarray:
    """(rows,) bool: the rows marked in the non-tensor column `guided`; none when there is no column."""
    if "guided" not in non_tensor_batch:
        return np.zeros(rows, dtype=bool)
    return np.asarray(non_tensor_batch["guided"], dtype=bool)


def sampled_token_mask(mask: torch.Tensor, non_tensor_batch: dict) -> torch.Tensor:
    """`mask` (bs, response_length) on the rows the policy sampled itself: rows marked guided get 0."""
    sampled = torch.as_tensor(~guided_rows(non_tensor_batch, mask.shape[0]), device=mask.device)
    return mask * sampled.unsqueeze(-1).to(mask.dtype)


def keep_unsolved_guides(index: np.ndarray, scores: np.ndarray, guided: np.ndarray) -> np.ndarray:
    """(bs,) bool, the rows to keep: every row the policy sampled, and a guided row only when no
    sampled row of its group scored above 0 (a group the policy did not solve).

    index: (bs,) group ids (``uid``); scores: (bs,) sequence scores; guided: (bs,) bool.

    >>> keep_unsolved_guides(np.array(["a", "a", "b", "b"]), np.array([1.0, 1.0, 0.0, 1.0]),
    ...                      np.array([False, True, False, True])).tolist()
    [True, False, True, True]
    """
    guided = np.asarray(guided, dtype=bool)
    solved = {uid for uid, score, g in zip(index, scores, guided) if not g and score > 0}
    return np.array([not g or uid not in solved for uid, g in zip(index, guided)], dtype=bool)


def unsolved_group_guide_advantage(estimator: Callable, group_size: int, **estimator_kwargs) -> float:
    """The advantage `estimator` gives a guide scoring 1 in a group of `group_size` rows whose other
    rows (the policy's own samples) all scored 0: the most a guide teaches in a group.

    estimator: a registered outcome estimator (no critic); estimator_kwargs: the trainer's keywords
    for it (e.g. norm_adv_by_std_in_grpo). Under GRPO the group's mean is 1/g and its unbiased std
    1/sqrt(g), so the guide gets (g - 1) / sqrt(g):

    >>> round(unsolved_group_guide_advantage(compute_grpo_outcome_advantage, 4), 4)
    1.5
    """
    rewards = torch.zeros(group_size, 1)
    rewards[-1, 0] = 1.0
    advantages, _ = estimator(token_level_rewards=rewards, values=None, response_mask=torch.ones(group_size, 1),
                              index=np.zeros(group_size, dtype=int), **estimator_kwargs)
    return float(advantages[-1, 0])


def weight_rows(advantages: torch.Tensor, rows: np.ndarray | torch.Tensor, weight: float) -> torch.Tensor:
    """advantages (bs, response_length) with those of `rows` ((bs,) bool) multiplied by `weight`.

    >>> weight_rows(torch.tensor([[1.0, 1.0], [-2.0, -2.0]]), np.array([False, True]), 0.5).tolist()
    [[1.0, 1.0], [-1.0, -1.0]]
    """
    rows = torch.as_tensor(np.asarray(rows, dtype=bool), device=advantages.device).unsqueeze(-1)
    return torch.where(rows, advantages * weight, advantages)


def positive_advantage_share(advantages: torch.Tensor, mask: torch.Tensor, rows: np.ndarray | torch.Tensor) -> float:
    """The share of the batch's positive advantage that `rows` carry: sum of max(A, 0) over the masked
    tokens of those rows / the same sum over all rows; 0 when no masked token has a positive advantage.

    advantages, mask: (bs, response_length) (mask: the policy-loss mask); rows: (bs,) bool.
    With token-level losses this is the share of the push towards higher likelihood that goes to
    those rows' tokens.

    >>> positive_advantage_share(torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 2.0]]),
    ...                          torch.tensor([[1, 1], [1, 1], [1, 0]]), np.array([False, False, True]))
    0.5
    """
    rows = torch.as_tensor(np.asarray(rows, dtype=bool), device=advantages.device).unsqueeze(-1)
    positive = advantages.clamp(min=0) * mask.to(advantages.dtype)
    total = positive.sum()
    if total <= 0:
        return 0.0
    return float((positive * rows).sum() / total)


def rollout_logprob_diff(rollout_log_probs: torch.Tensor, log_probs: torch.Tensor,
                         mask: torch.Tensor) -> dict[str, float]:
    """How far the sampler's log-probs are from the trainer's: max and mean of |a - b| over the tokens
    where `mask` is 1, as `rollout/logprob_diff_max` and `rollout/logprob_diff_mean`; both 0 when the
    mask holds no token. All (bs, response_length); the mask should hold only tokens the policy
    sampled (state mask, rows not guided).

    Both are log p(token) under log_softmax(logits / temperature); apart from float rounding they
    differ when the engine is not the trainer's model (stale or wrongly synced weights, another
    dtype or kernel, a processor the trainer does not apply), i.e. when the update is off-policy
    without the trainer knowing.

    >>> rollout_logprob_diff(torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.5, -2.0, -3.0]]),
    ...                      torch.tensor([[1, 1, 0]]))
    {'rollout/logprob_diff_max': 0.5, 'rollout/logprob_diff_mean': 0.25}
    """
    diff = (rollout_log_probs.float() - log_probs.detach().float()).abs()[mask.bool()]
    if diff.numel() == 0:
        return {"rollout/logprob_diff_max": 0.0, "rollout/logprob_diff_mean": 0.0}
    return {"rollout/logprob_diff_max": float(diff.max()), "rollout/logprob_diff_mean": float(diff.mean())}


def sampler_old_log_probs(rollout_log_probs: torch.Tensor, loss_mask: torch.Tensor,
                          sampled_mask: torch.Tensor) -> torch.Tensor:
    """The old log-probs of an update taken against the policy that sampled the batch, when the actor
    has moved past it (one step off): the sampler's log-prob on every token the policy loss counts, 0
    elsewhere. The PPO ratio is then pi_now / pi_sampler, which is not 1 at the first mini-batch.

    rollout_log_probs: the engine's log-probs; loss_mask: the tokens the policy loss counts;
    sampled_mask: the tokens the policy sampled itself (info_mask 0, rows not guided). All
    (bs, response_length). A counted token outside sampled_mask (an observation when the loss does not
    mask them, a guide's token) has no sampler log-prob to take the ratio against: ValueError.

    >>> sampler_old_log_probs(torch.tensor([[-0.5, -1.0, -2.0]]), torch.tensor([[1, 1, 0]]),
    ...                       torch.tensor([[1, 1, 1]])).tolist()
    [[-0.5, -1.0, 0.0]]
    """
    unsampled = loss_mask.bool() & ~sampled_mask.bool()
    if unsampled.any():
        raise ValueError(f"the policy loss counts {int(unsampled.sum())} token(s) no policy sampled (observations "
                         "the loss does not mask, guided rows): they have no sampler log-prob for the ratio")
    return torch.where(loss_mask.bool(), rollout_log_probs, torch.zeros_like(rollout_log_probs))


# ----------------------------------------------------------------------------- KL


def _kl_k1(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    # log(p/q): unbiased for KL(p||q) under samples from p, but high variance and can be negative.
    return logprob - ref_logprob


def _kl_abs(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    return (logprob - ref_logprob).abs()


def _kl_k2(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    # 0.5 * log(p/q)^2: biased but low variance and never negative.
    return 0.5 * (logprob - ref_logprob).square()


def _kl_k3(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    # q/p - log(q/p) - 1: unbiased, non-negative, low variance. The clamp guards against
    # exp overflow when the policy and the reference disagree wildly on a token.
    log_ratio = ref_logprob - logprob
    return (log_ratio.exp() - log_ratio - 1).clamp(min=-10.0, max=10.0)


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "kl": _kl_k1,
    "k1": _kl_k1,
    "abs": _kl_abs,
    "mse": _kl_k2,
    "k2": _kl_k2,
    "low_var_kl": _kl_k3,
    "k3": _kl_k3,
}


def kl_penalty(logprob: torch.Tensor, ref_logprob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs.

    logprob, ref_logprob: (bs, response_length) -> (bs, response_length).
    ``kl_penalty``: "kl"/"k1" (log-ratio), "abs", "mse"/"k2" (half squared log-ratio),
    "low_var_kl"/"k3" (clamped to [-10, 10]).
    """
    if kl_penalty not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_penalty {kl_penalty!r}; known: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kl_penalty](logprob, ref_logprob)


def apply_kl_penalty(
    token_level_scores: torch.Tensor,
    old_log_prob: torch.Tensor,
    ref_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    kl_penalty_type: str = "kl",
) -> tuple[torch.Tensor, dict[str, float]]:
    """In-reward KL penalty: rewards = scores - kl_coef * KL per token.

    All tensors (bs, response_length). Returns (token_level_rewards, metrics) where
    ``metrics["actor/reward_kl_penalty"]`` is the batch mean of per-sequence mean KL: the
    trainer passes it to ``kl_ctrl.update(current_kl, n_steps=bs)`` (kept out of here so this
    stays a pure function).
    """
    mask = response_mask.to(token_level_scores.dtype)
    kld = kl_penalty(old_log_prob, ref_log_prob, kl_penalty_type) * mask
    rewards = token_level_scores - kl_coef * kld
    current_kl = verl_F.masked_mean(kld, mask, dim=-1).mean().item()
    return rewards, {"actor/reward_kl_penalty": current_kl, "actor/reward_kl_penalty_coeff": float(kl_coef)}


# ----------------------------------------------------------------------------- loss aggregation
#
# Each mode is (sum over the batch of per-unit losses) / (number of units), where the unit is a
# token for token-mean and a sequence otherwise. Passing ``normalizer`` = the unit count of the
# WHOLE mini-batch (all micro-batches, all ranks; see agg_loss_normalizer) makes summed
# micro-batch gradients equal the one-big-batch gradient exactly.


def _token_sum(loss_mat: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    return verl_F.masked_sum(loss_mat, loss_mask)


def _seq_token_sum(loss_mat: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    return verl_F.masked_sum(loss_mat, loss_mask, dim=-1).sum()


def _seq_token_mean(loss_mat: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    return verl_F.masked_mean(loss_mat, loss_mask, dim=-1).sum()


def _count_tokens(loss_mask: torch.Tensor) -> torch.Tensor:
    return loss_mask.sum()


def _count_sequences(loss_mask: torch.Tensor) -> torch.Tensor:
    # A row with no valid token (e.g. an empty response) is not a sequence to average over.
    return (loss_mask.sum(dim=-1) > 0).sum()


# mode -> (numerator: sum of per-unit losses, denominator: number of units)
LOSS_AGG_MODES: dict[str, tuple[Callable, Callable]] = {
    "token-mean": (_token_sum, _count_tokens),
    "seq-mean-token-sum": (_seq_token_sum, _count_sequences),
    "seq-mean-token-mean": (_seq_token_mean, _count_sequences),
}


def _agg_mode(loss_agg_mode: str) -> tuple[Callable, Callable]:
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}; known: {sorted(LOSS_AGG_MODES)}")
    return LOSS_AGG_MODES[loss_agg_mode]


def state_mask(response_mask: torch.Tensor, info_mask: torch.Tensor | None, state_masking: bool) -> torch.Tensor:
    """The response tokens a loss (and GAE) counts: response_mask, without the tokens the policy did
    not write (retrieved blocks, info_mask 1) when state_masking (Search-R1's term). The policy's
    and the critic's losses each pass their own flag. All (bs, response_length).

    >>> state_mask(torch.tensor([[1, 1, 1, 0]]), torch.tensor([[0, 1, 0, 0]]), True).tolist()
    [[1, 0, 1, 0]]
    """
    if not state_masking or info_mask is None:
        return response_mask
    return response_mask * (1 - info_mask)


def batch_state_mask(tensors, state_masking: bool) -> torch.Tensor:
    """`state_mask` of a batch's tensors (a DataProto's `batch`): its response_mask, and its info_mask
    when it has one (agent rollouts do, plain generations do not)."""
    return state_mask(tensors["response_mask"], tensors.get("info_mask", None), state_masking)


def agg_loss_normalizer(loss_mask: torch.Tensor, loss_agg_mode: str) -> torch.Tensor:
    """The denominator ``agg_loss`` uses for this mask: valid tokens (token-mean) or sequences
    with at least one valid token (seq-mean-*). loss_mask: (bs, response_length) -> scalar.

    Compute it over the whole mini-batch and pass it to every micro-batch's loss. Across data-
    parallel ranks, sum it over ranks; if the gradients are then averaged over ranks (DDP/FSDP
    all-reduce mean) pass that sum divided by the world size, so the average undoes the division.
    """
    return _agg_mode(loss_agg_mode)[1](loss_mask)


def agg_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar.

    loss_mat, loss_mask: (bs, response_length).
    - "token-mean": sum of valid-token losses / number of valid tokens (DAPO);
    - "seq-mean-token-sum": per-sequence sum, averaged over sequences;
    - "seq-mean-token-mean": per-sequence mean, averaged over sequences (the GRPO paper's form).
    ``normalizer`` replaces the local denominator (see agg_loss_normalizer); with it, the
    micro-batch losses of one mini-batch sum to that mini-batch's loss. A denominator of 0
    (everything masked) gives a loss of 0.
    """
    numerator, count = _agg_mode(loss_agg_mode)
    total = numerator(loss_mat, loss_mask)
    denominator = count(loss_mask) if normalizer is None else torch.as_tensor(normalizer)
    # float32 holds counts up to 2^24 exactly; the clamp makes an all-masked batch give 0, not NaN.
    return total / denominator.to(device=total.device, dtype=torch.float32).clamp(min=1e-8)


# ----------------------------------------------------------------------------- losses


def compute_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    cliprange: float = 0.2,
    cliprange_low: float | None = None,
    cliprange_high: float | None = None,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped PPO surrogate with dual-clip for negative advantages.

    All tensors (bs, response_length). ratio r = exp(log_prob - old_log_prob) (the log-ratio is
    clamped to [-20, 20] so one runaway token cannot overflow exp). Per token:
      L = max(-A r, -A clip(r, 1 - cliprange_low, 1 + cliprange_high))
    and, where A < 0, L = min(L, -A clip_ratio_c), bounding how far a very large ratio can push a
    bad action (dual-clip). cliprange_low/high default to cliprange.
    Returns (pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower), all scalars:
    pg_clipfrac = share of valid tokens where the clipped term is the larger one;
    ppo_kl = mean of old_log_prob - log_prob (k1 estimate of KL(old || new));
    pg_clipfrac_lower = share where the dual clip is active.
    """
    if clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 for dual-clip PPO, got {clip_ratio_c}")
    low = cliprange if cliprange_low is None else cliprange_low
    high = cliprange if cliprange_high is None else cliprange_high
    mask = response_mask.to(log_prob.dtype)

    log_ratio = (log_prob - old_log_prob).clamp(min=-20.0, max=20.0)
    ratio = log_ratio.exp()
    ppo_kl = verl_F.masked_mean(-log_ratio, mask)

    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - low, 1.0 + high)
    ppo_losses = torch.maximum(unclipped, clipped)
    pg_clipfrac = verl_F.masked_mean((clipped > unclipped).to(mask.dtype), mask)

    dual_bound = -advantages * clip_ratio_c
    negative = advantages < 0
    pg_losses = torch.where(negative, torch.minimum(ppo_losses, dual_bound), ppo_losses)
    pg_clipfrac_lower = verl_F.masked_mean(((ppo_losses > dual_bound) & negative).to(mask.dtype), mask)

    pg_loss = agg_loss(pg_losses, mask, loss_agg_mode, normalizer)
    return pg_loss, pg_clipfrac.detach(), ppo_kl.detach(), pg_clipfrac_lower.detach()


def compute_value_loss(
    vpreds: torch.Tensor,
    returns: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    cliprange_value: float,
    loss_agg_mode: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: 0.5 * agg(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)).

    vpreds (new values), returns, values (old values), response_mask: (bs, response_length).
    Returns (vf_loss, vf_clipfrac): vf_clipfrac = share of valid tokens where the clipped error
    is the larger one.
    """
    mask = response_mask.to(vpreds.dtype)
    vpred_clipped = verl_F.clip_by_value(vpreds, values - cliprange_value, values + cliprange_value)
    err_unclipped = (vpreds - returns).square()
    err_clipped = (vpred_clipped - returns).square()
    vf_loss = 0.5 * agg_loss(torch.maximum(err_unclipped, err_clipped), mask, loss_agg_mode, normalizer)
    vf_clipfrac = verl_F.masked_mean((err_clipped > err_unclipped).to(mask.dtype), mask)
    return vf_loss, vf_clipfrac.detach()


def compute_entropy_loss(
    logits: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Aggregated entropy of the policy at each response position.

    logits: (bs, response_length, vocab); response_mask: (bs, response_length) -> scalar.
    The actor subtracts entropy_coeff times this from its loss to encourage exploration.
    """
    entropy = verl_F.entropy_from_logits(logits)
    return agg_loss(entropy, response_mask.to(entropy.dtype), loss_agg_mode, normalizer)


# ----------------------------------------------------------------------------- KL controllers


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt; present so the trainer treats both controllers alike."""


class AdaptiveKLController:
    """Proportional controller steering the observed KL towards ``target_kl`` (Ziegler et al. 2019).

    After each batch: e = clip(current_kl / target_kl - 1, -0.2, 0.2) and
    value *= 1 + e * n_steps / horizon, so the coefficient moves at most 20% per ``horizon`` steps.
    """

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: int):
        if target_kl <= 0 or horizon <= 0:
            raise ValueError(f"target_kl and horizon must be positive, got {target_kl} and {horizon}")
        self.value = init_kl_coef
        self.target = target_kl
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_steps / self.horizon


def _adaptive_kl_controller(kl_coef: float, target_kl: float | None, horizon: int | None) -> AdaptiveKLController:
    if target_kl is None or horizon is None:
        raise ValueError("an adaptive KL controller needs target_kl and horizon")
    return AdaptiveKLController(kl_coef, target_kl, horizon)


# algorithm.kl_ctrl.type -> builder(kl_coef, target_kl, horizon)
KL_CONTROLLERS: dict[str, Callable[[float, float | None, int | None], FixedKLController | AdaptiveKLController]] = {
    "fixed": lambda kl_coef, target_kl, horizon: FixedKLController(kl_coef),
    "adaptive": _adaptive_kl_controller,
}


def get_kl_controller(
    kl_type: str, kl_coef: float, target_kl: float | None = None, horizon: int | None = None
) -> FixedKLController | AdaptiveKLController:
    """The controller registered as ``algorithm.kl_ctrl.type`` in KL_CONTROLLERS."""
    if kl_type not in KL_CONTROLLERS:
        raise ValueError(f"unknown kl_ctrl.type {kl_type!r}; known: {sorted(KL_CONTROLLERS)}")
    return KL_CONTROLLERS[kl_type](kl_coef, target_kl, horizon)
