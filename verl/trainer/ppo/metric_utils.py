"""Per-step training metrics as flat, namespaced dicts of floats (``critic/score/mean``,
``timing_s/gen``, ``perf/throughput``), ready for any logger. Pure functions of a batch and timings.

Batch keys follow docs/architecture.md: ``responses`` (bs, R), ``attention_mask`` (bs, P + R),
``response_mask`` (bs, R), ``token_level_scores``, ``token_level_rewards``, ``advantages``,
``returns`` and (with a critic) ``values``, all (bs, R).
"""

from __future__ import annotations

import torch

from verl.protocol import DataProto

__all__ = ["compute_data_metrics", "compute_timing_metrics", "compute_throughput_metrics"]


def _stats(prefix: str, x: torch.Tensor) -> dict[str, float]:
    """mean/max/min of a 1-D tensor; an empty one (everything masked) reports zeros."""
    if x.numel() == 0:
        return {f"{prefix}/mean": 0.0, f"{prefix}/max": 0.0, f"{prefix}/min": 0.0}
    x = x.float()
    return {f"{prefix}/mean": x.mean().item(), f"{prefix}/max": x.max().item(), f"{prefix}/min": x.min().item()}


def _lengths(batch: DataProto) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_length, response_length), each (bs,), counting real (unpadded) tokens.

    Response length counts every real response token, retrieved ``<information>`` tokens included.
    """
    response_length = batch.batch["responses"].shape[-1]
    prompt_mask = batch.batch["attention_mask"][:, :-response_length]
    return prompt_mask.sum(-1).float(), batch.batch["response_mask"].sum(-1).float()


def compute_data_metrics(batch: DataProto, use_critic: bool = True) -> dict[str, float]:
    """Scores, rewards, advantages, returns, values and lengths of one training batch.

    Sequence scores/rewards are sums over the response; advantages/returns/values are taken
    over valid response tokens only. ``critic/vf_explained_var`` = 1 - Var(R - V) / Var(R),
    1 for a perfect critic, 0 for one that only predicts the mean (1e-5 guards Var(R) = 0).
    ``*/clip_ratio`` is the share of rows that hit the padded width (truncated).
    """
    b = batch.batch
    mask = b["response_mask"].bool()
    max_response = b["responses"].shape[-1]
    max_prompt = b["attention_mask"].shape[-1] - max_response
    prompt_length, response_length = _lengths(batch)

    metrics = {
        **_stats("critic/score", b["token_level_scores"].sum(-1)),
        **_stats("critic/rewards", b["token_level_rewards"].sum(-1)),
        **_stats("critic/advantages", torch.masked_select(b["advantages"], mask)),
        **_stats("critic/returns", torch.masked_select(b["returns"], mask)),
    }
    if use_critic:
        values = torch.masked_select(b["values"], mask).float()
        returns = torch.masked_select(b["returns"], mask).float()
        metrics.update(_stats("critic/values", values))
        if returns.numel() > 1:
            explained = 1.0 - (returns - values).var() / (returns.var() + 1e-5)
            metrics["critic/vf_explained_var"] = explained.item()
    metrics.update(_stats("response_length", response_length))
    metrics["response_length/clip_ratio"] = (response_length == max_response).float().mean().item()
    metrics.update(_stats("prompt_length", prompt_length))
    metrics["prompt_length/clip_ratio"] = (prompt_length == max_prompt).float().mean().item()
    return metrics


def compute_timing_metrics(batch: DataProto, timing_raw: dict[str, float]) -> dict[str, float]:
    """``timing_s/<phase>`` (seconds) and ``timing_per_token_ms/<phase>`` for each measured phase.

    ``gen`` is divided by the generated (response) tokens; every other phase processes whole
    sequences, so it is divided by all real tokens (prompt + response).
    """
    prompt_length, response_length = _lengths(batch)
    response_tokens = response_length.sum().item()
    all_tokens = response_tokens + prompt_length.sum().item()
    metrics = {f"timing_s/{name}": float(seconds) for name, seconds in timing_raw.items()}
    for name, seconds in timing_raw.items():
        tokens = response_tokens if name == "gen" else all_tokens
        metrics[f"timing_per_token_ms/{name}"] = 1000.0 * seconds / max(tokens, 1.0)
    return metrics


def compute_throughput_metrics(batch: DataProto, timing_raw: dict[str, float], n_devices: int = 1) -> dict[str, float]:
    """``perf/total_num_tokens`` (real prompt + response tokens of the step), ``perf/time_per_step``
    (``timing_raw["step"]`` seconds) and ``perf/throughput`` (tokens / s per device, as veRL reports it)."""
    prompt_length, response_length = _lengths(batch)
    total = prompt_length.sum().item() + response_length.sum().item()
    step = float(timing_raw["step"])
    return {
        "perf/total_num_tokens": float(total),
        "perf/time_per_step": step,
        "perf/throughput": total / (step * n_devices),
    }
