"""The epoch / mini-batch / micro-batch loop that the actor and the critic share.

One optimizer step per mini-batch; its gradient is accumulated over micro-batches. Every
micro-batch loss is divided by the SAME explicit denominator, the mini-batch's unit count over all
ranks divided by the world size (FSDP averages gradients over ranks), so the accumulated gradient
equals the gradient of the whole mini-batch's loss computed at once, whatever the micro-batch size
or the number of ranks.

On one rank, rows that carry no gradient (an actor's rows whose advantage is 0 on every scored token,
when the loss is the policy-gradient term alone) are not backpropagated: they are run forward
without a graph for their metrics only, and still count in the denominator, so the step is the same.
With several ranks every row is backpropagated: each FSDP forward and backward is collective, so
every rank must run as many of each as the others, whatever its rows' advantages.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

import torch
import torch.distributed as dist

from verl.protocol import DataProto
from verl.trainer.ppo.core_algos import agg_loss_normalizer
from verl.utils.distributed import all_reduce_mean, world_size
from verl.utils.fsdp_utils import clip_grad_norm
from verl.utils.seqlen_balancing import micro_batches

# micro_loss(micro_batch, normalizer) -> (loss to backpropagate, additive metrics, averaged metrics):
# additive ones (loss terms) sum over the micro-batches of a mini-batch, averaged ones are means.
MicroLoss = Callable[[DataProto, torch.Tensor], tuple[torch.Tensor, dict, dict]]


def global_normalizer(loss_mask: torch.Tensor, loss_agg_mode: str) -> torch.Tensor:
    count = agg_loss_normalizer(loss_mask, loss_agg_mode).to(torch.float64)
    if world_size() > 1:
        count = count.to(loss_mask.device)
        dist.all_reduce(count)
        count = count / world_size()
    return count


def run_updates(
    data: DataProto,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    mini_batch_size: int,
    micro_batch_size: int,
    max_token_len: int | None = None,
    epochs: int,
    shuffle: bool,
    loss_mask: Callable[[DataProto], torch.Tensor],
    loss_agg_mode: str,
    grad_clip: float,
    micro_loss: MicroLoss,
    prefix: str,
    inert_rows: Callable[[DataProto], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train `module` on `data` (this rank's rows); returns metrics averaged over steps and ranks.

    Micro-batches hold `micro_batch_size` rows, or, with `max_token_len`, as many rows as fit that
    many padded tokens (use_dynamic_bsz): the explicit normalizer makes both give the same gradient.
    `inert_rows(mini)` (bool per row) names rows whose loss has no gradient (see the module's note).
    """
    history = defaultdict(list)
    module.train()
    for epoch in range(epochs):
        if shuffle:  # same permutation law on every rank, different rows: each rank has its own data
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch))
            epoch_data = data[order]
        else:
            epoch_data = data
        for mini in epoch_data.split(mini_batch_size):
            normalizer = global_normalizer(loss_mask(mini), loss_agg_mode)
            optimizer.zero_grad(set_to_none=True)
            trained, looked_at = split_inert(mini, inert_rows)
            micros = micro_batches(trained, micro_batch_size, max_token_len)
            watched = micro_batches(looked_at, micro_batch_size, max_token_len) if looked_at is not None else []
            step = defaultdict(float)

            def record(additive: dict, averaged: dict) -> None:
                for key, value in additive.items():
                    step[key] += float(value)
                for key, value in averaged.items():
                    step[key] += float(value) / (len(micros) + len(watched))

            for i, micro in enumerate(micros):
                if hasattr(module, "set_requires_gradient_sync"):  # FSDP2: reduce once per mini-batch
                    module.set_requires_gradient_sync(i == len(micros) - 1)
                loss, additive, averaged = micro_loss(micro, normalizer)
                loss.backward()
                record(additive, averaged)
            with torch.no_grad():
                for micro in watched:
                    _, additive, averaged = micro_loss(micro, normalizer)
                    record(additive, averaged)
            grad_norm = clip_grad_norm(module.parameters(), grad_clip)
            if math.isfinite(grad_norm):
                optimizer.step()
            else:  # one bad batch must not poison the weights; the metric shows it
                optimizer.zero_grad(set_to_none=True)
            step[f"{prefix}/grad_norm"] = grad_norm
            for key, value in step.items():
                history[key].append(value)
    optimizer.zero_grad(set_to_none=True)
    return all_reduce_mean({key: sum(values) / len(values) for key, values in history.items()})


def split_inert(mini: DataProto, inert_rows: Callable[[DataProto], torch.Tensor] | None
                ) -> tuple[DataProto, DataProto | None]:
    """(rows to backpropagate, rows only to look at or None). At least one row is backpropagated, so
    the optimizer gets a zero gradient rather than none (Adam's step with a zero gradient still moves
    the weights on its momentum, as it did when every row was backpropagated)."""
    if inert_rows is None or world_size() > 1:
        return mini, None
    inert = inert_rows(mini).to("cpu", torch.bool).clone()
    if not inert.any():
        return mini, None
    if inert.all():
        inert[0] = False
    return mini[~inert], mini[inert]
