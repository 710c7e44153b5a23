"""Small tensor helpers shared by the PPO math and the workers. Pure torch; no state.

Masks are 0/1 tensors (any dtype) broadcastable to the values; a masked statistic only sees the
positions where the mask is 1, so right padding and retrieved ``<information>`` tokens can be
excluded without reshaping ragged rows.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Tokens whose [tokens, vocab] fp32 logits are alive at once, in forward and in backward, when log-probs
# or a loss are computed from an LM head: 2048 at a 150k vocabulary are 1.2 GB a buffer, where a
# micro-batch of 16 x 3k tokens at once was 29 GB.
HEAD_CHUNK_TOKENS = 2048

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "logprobs_from_logits",
    "entropy_from_logits",
    "token_scores_in_chunks",
    "head_scores",
    "clip_by_value",
    "pad_sequence_to_length",
    "pad_2d_list_to_length",
]


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is 1, over ``dim`` (all dims when None)."""
    total = values * mask
    return total.sum() if dim is None else total.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1, over ``dim`` (all dims when None).

    An all-zero mask gives 0 rather than NaN (the count is clamped to at least 1), so a
    micro-batch made entirely of padding contributes nothing instead of poisoning the step.
    The count stays in the mask's own dtype so a bf16 ``values`` does not round it.
    """
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries (scalar); Bessel's correction n/(n-1) when ``unbiased``.

    A single unmasked entry gets no correction (its variance is 0 either way); an empty mask
    raises, since it almost always means the caller passed the wrong mask.
    """
    count = mask.sum()
    if count == 0:
        raise ValueError("masked_var: the mask has no unmasked entries")
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / sqrt(var + 1e-8) with mean and unbiased var over the masked entries.

    With ``shift_mean=False`` the mean is added back, keeping the sign information of the raw
    values while still rescaling them. Masked-out positions are transformed too; callers
    multiply by the mask where that matters.
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask, unbiased=True)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) under softmax(logits).

    logits: (..., vocab); labels: (...) integer ids -> (...).
    Computed as logit[label] - logsumexp(logits), so no (..., vocab) log-softmax tensor is
    materialised beyond what logsumexp needs; for a 150k vocabulary that halves peak memory.
    """
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim: (..., vocab) -> (...).

    H = logsumexp(z) - sum softmax(z) * z, which is stable for large logits.
    """
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def token_scores_in_chunks(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    temperature: float,
    chunk_tokens: int,
    with_entropy: bool,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(label), entropy or None) under softmax(head(hidden) / temperature), one per row.

    hidden: [N, H]; labels: [N] ids; head: [n, H] -> [n, V] logits (an LM head) -> ([N], [N]), fp32.
    The head runs on `chunk_tokens` rows at a time, so at most one chunk's [chunk, V] logits (and
    their softmax) are alive: the [N, V] fp32 logits of 16 x 3k tokens at a 150k vocabulary would
    be 29 GB. Under autograd each chunk is checkpointed: backward recomputes its logits instead of
    keeping them, so backward is O(chunk x V) too. Every row's result is that of the whole [N, V]
    computation. The entropy carries gradient only when `entropy_grad`.
    """
    if hidden.shape[0] != labels.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden states for {labels.shape[0]} labels")

    def score(rows: torch.Tensor, rows_labels: torch.Tensor):
        logits = head(rows).float()
        if temperature != 1.0:
            logits = logits / temperature
        log_probs = logprobs_from_logits(logits, rows_labels)
        if not with_entropy:
            return log_probs, None
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            return log_probs, entropy_from_logits(logits)

    chunks = zip(hidden.split(chunk_tokens), labels.split(chunk_tokens))
    if torch.is_grad_enabled():
        scores = [checkpoint(score, rows, rows_labels, use_reentrant=False) for rows, rows_labels in chunks]
    else:
        scores = [score(rows, rows_labels) for rows, rows_labels in chunks]
    log_probs = torch.cat([log_prob for log_prob, _ in scores])
    return log_probs, torch.cat([entropy for _, entropy in scores]) if with_entropy else None


@contextmanager
def head_scores(head: torch.nn.Module, positions: torch.Tensor, score: Callable[[torch.Tensor], tuple]):
    """While open, the model's call of its output embedding `head` on hidden states [b, t, H] appends
    `score(hidden[positions])` ([N, H] for a [b, t] bool `positions`) to the yielded list, and the
    head itself runs on no position. So the scores come from exactly the hidden states the model
    feeds its head, inside the model's forward (where FSDP has gathered the head's weights), and
    the model never builds [b, t, V] logits (the PPO actor's log-probs and the SFT trainer's loss)."""
    scores = []

    def score_instead(module, args):
        hidden = args[0]
        scores.append(score(hidden[positions]))
        return (hidden[..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(score_instead)
    try:
        yield scores
    finally:
        handle.remove()


def clip_by_value(x: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
    """Element-wise clamp of ``x`` to [low, high]; the bounds may be tensors (e.g. old values +- eps)."""
    low = torch.as_tensor(low, dtype=x.dtype, device=x.device)
    high = torch.as_tensor(high, dtype=x.dtype, device=x.device)
    return torch.minimum(torch.maximum(x, low), high)


def pad_sequence_to_length(
    tensor: torch.Tensor, max_len: int, pad_value: float, left_pad: bool = False
) -> torch.Tensor:
    """Pad the last dim of ``(..., L)`` to ``(..., max_len)``; unchanged when already at least that long."""
    missing = max_len - tensor.shape[-1]
    if missing <= 0:
        return tensor
    pad = (missing, 0) if left_pad else (0, missing)
    return F.pad(tensor, pad, value=pad_value)


def trim_padding_columns(batch: dict, response_length: int) -> tuple[dict, int]:
    """Model inputs of a [B, P + R] batch (left-padded prompts, right-padded responses) without the
    columns that are padding in every row, and R' <= R, the response columns kept.

    Such columns change no output at any other position (nothing attends to them and position_ids
    are explicit), so a micro-batch of short rows does not pay for the longest row of the batch.
    The kept window always includes the last prompt column, whose output predicts response token 0.
    """
    attended = batch["attention_mask"].bool().any(dim=0)
    total = attended.shape[0]
    prompt_end = total - response_length
    first = min(int(attended.to(torch.int8).argmax()), prompt_end - 1)
    last = max(total - int(attended.flip(0).to(torch.int8).argmax()), prompt_end)
    inputs = {key: batch[key][..., first:last] for key in ("input_ids", "attention_mask", "position_ids")}
    return inputs, last - prompt_end


def pad_2d_list_to_length(
    rows: list[list[int]], pad_value: int, max_length: int | None = None, left_pad: bool = False
) -> torch.Tensor:
    """Ragged token lists -> ``(len(rows), max(max_length, longest row))`` long tensor."""
    width = max((len(r) for r in rows), default=0)
    if max_length is not None:
        width = max(width, max_length)
    out = torch.full((len(rows), width), pad_value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if left_pad:
                out[i, width - len(r) :] = torch.as_tensor(r, dtype=torch.long)
            else:
                out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out
