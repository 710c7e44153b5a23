"""FSDP2 (`fully_shard`) applied from outside the model, full state dicts, lr schedules.

CPU: params stay fp32, collectives over gloo. GPU: bf16 compute with fp32 gradient reduction,
and `fsdp_config.param_offload`/`optimizer_offload` keep the fp32 shards (and so Adam's states,
which FSDP2 keeps beside them) in CPU memory between uses.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from verl.utils.model import decoder_layer_classes


def apply_fsdp2(model: torch.nn.Module, fsdp_cfg, use_gpu: bool) -> torch.nn.Module:
    """Shard each transformer block, then the root (embeddings, head), over all ranks."""
    offload = fsdp_cfg.param_offload or fsdp_cfg.optimizer_offload
    if use_gpu and not offload:
        model.to(torch.device("cuda", 0))
    mesh = init_device_mesh("cuda" if use_gpu else "cpu", (dist.get_world_size(),))
    kwargs = {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if use_gpu else MixedPrecisionPolicy(),
        "offload_policy": CPUOffloadPolicy() if use_gpu and offload else OffloadPolicy(),
    }
    blocks = decoder_layer_classes(model)
    for module in model.modules():
        if isinstance(module, blocks):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state_dict(model: torch.nn.Module) -> dict:
    """Unsharded CPU tensors on rank 0 (empty elsewhere); every rank must call it."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_state_dicts(model, optimizer, model_sd: dict, optim_sd: dict | None, strict: bool = True) -> None:
    """Inverse of the two above: rank 0 passes the dicts, other ranks empty ones (broadcast).
    `strict=False` loads a part of the weights (a LoRA checkpoint's adapter)."""
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
    set_model_state_dict(model, model_sd, options=options)
    if optimizer is not None and optim_sd is not None:
        set_optimizer_state_dict(model, optimizer, optim_sd, options=options)


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Global gradient norm (over all shards) before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor when parameters are FSDP2 shards
        norm = norm.full_tensor()
    return float(norm)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0, then constant or cosine down to min_lr_ratio (veRL's schedules).

    Warm-up steps: `lr_warmup_steps` when > 0, else `lr_warmup_steps_ratio * total_training_steps`.
    """
    total, warmup, style = optim_cfg.total_training_steps, optim_cfg.lr_warmup_steps, optim_cfg.warmup_style
    if warmup <= 0:
        warmup = int(optim_cfg.lr_warmup_steps_ratio * max(total, 0))
    min_ratio = optim_cfg.min_lr_ratio
    if style not in ("constant", "cosine"):
        raise ValueError(f"optim.warmup_style must be constant or cosine, got {style!r}")
    if style == "cosine" and total <= 0:
        raise ValueError("optim.warmup_style=cosine needs optim.total_training_steps > 0")

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if style == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
