"""FSDP2 (`fully_shard`) applied from outside the model, full state dicts, lr schedules.

Parameters are stored in fp32; forwards and backwards compute in `fsdp_config.dtype` (FSDP2's
MixedPrecisionPolicy casts the gathered parameters; `auto`: bf16 on GPU and on a CPU with bf16
instructions, see verl/utils/precision.py) and gradients are reduced in fp32. Collectives go over
gloo on CPU. `fsdp_config.param_offload` keeps the fp32 parameter shards and their gradients in CPU
memory (FSDP2's CPUOffloadPolicy: Adam then steps on the CPU, its states beside the shards), and
`fsdp_config.optimizer_offload` keeps only Adam's states there between updates
(`move_optimizer_state`). Both on GPU only: on CPU there is nothing to offload to.
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
from torch.distributed.tensor import DTensor, Shard

from verl.utils import precision
from verl.utils.model import decoder_layer_classes


def apply_fsdp2(model: torch.nn.Module, fsdp_cfg, use_gpu: bool) -> torch.nn.Module:
    """Shard each transformer block, then the root (embeddings, head), over all ranks."""
    offload_params = use_gpu and fsdp_cfg.param_offload
    if use_gpu and not offload_params:
        model.to(torch.device("cuda", 0))
    mesh = init_device_mesh("cuda" if use_gpu else "cpu", (dist.get_world_size(),))
    kwargs = {
        "mesh": mesh,
        "mp_policy": mixed_precision_policy(fsdp_cfg.dtype, use_gpu),
        "offload_policy": CPUOffloadPolicy() if offload_params else OffloadPolicy(),
    }
    blocks = decoder_layer_classes(model)
    for module in model.modules():
        if isinstance(module, blocks):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


def mixed_precision_policy(dtype: str, use_gpu: bool) -> MixedPrecisionPolicy:
    """FSDP2's policy for computing in `dtype` (a config name, see precision.compute_dtype) over
    fp32 parameters: gathered parameters are cast to it; gradients are reduced in fp32."""
    return MixedPrecisionPolicy(param_dtype=precision.compute_dtype(dtype, use_gpu), reduce_dtype=torch.float32)


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
    """Scale the gradients so that their global L2 norm is at most `max_norm` (as
    torch.nn.utils.clip_grad_norm_: by max_norm / (norm + 1e-6) when that is below 1); returns the
    norm before clipping.

    FSDP2 gradients are DTensors sharded (Shard placements only) over the mesh's group: the global
    norm is the square root of the sum over ranks of each rank's local sum of squares, all-reduced
    over that group on the shards' own device. Offloaded shards live on the CPU, where the mixed
    backend sends the reduction through gloo (NCCL reduces CUDA tensors only). Plain tensors (a
    model outside FSDP) need no reduction. A non-finite norm leaves the gradients as they are: the
    caller skips that step."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    local = [_local_shard(g) for g in grads]
    squares = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) ** 2 for g in local]).sum()
    groups = {g.device_mesh.get_group() for g in grads if isinstance(g, DTensor)}
    if len(groups) > 1:
        raise ValueError("clip_grad_norm: the gradients are sharded over several process groups")
    if groups:
        dist.all_reduce(squares, group=groups.pop())
    norm = float(squares.sqrt())
    coefficient = max_norm / (norm + 1e-6)
    if math.isfinite(norm) and coefficient < 1.0:
        torch._foreach_mul_(local, coefficient)
    return norm


def _local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local part (shares its storage), refusing replicated placements, whose squares
    the all-reduce would count once per replica; a plain tensor as it is."""
    if not isinstance(tensor, DTensor):
        return tensor
    if not all(isinstance(p, Shard) for p in tensor.placements):
        raise ValueError(f"clip_grad_norm needs sharded gradients, got placements {tensor.placements}")
    return tensor.to_local()


def moves_optimizer_state(fsdp_cfg, use_gpu: bool) -> bool:
    """Whether Adam's states go to CPU memory between updates: optimizer_offload on GPU. With
    param_offload too there is nothing to move: the step runs on the CPU shards, its states beside them."""
    return use_gpu and fsdp_cfg.optimizer_offload and not fsdp_cfg.param_offload


def move_optimizer_state(optimizer: torch.optim.Optimizer, target: torch.device | str) -> None:
    """Move every tensor state of `optimizer` (Adam's moments, sharded as the parameters) to
    `target`, in place of the old ones. Adam's `step` counter stays where torch keeps it, on the
    CPU: a step counter on the GPU would make every step read it back to the host. The copies are
    blocking, so the host may read the moved states at once (a checkpoint gathers them)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if key != "step" and torch.is_tensor(value):
                    state[key] = value.to(target)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0, then constant or cosine down to min_lr_ratio (veRL's schedules).

    Warm-up steps: `lr_warmup_steps` when > 0, else `lr_warmup_steps_ratio * total_training_steps`.
    """
    total, warmup, style = optim_cfg.total_training_steps, optim_cfg.lr_warmup_steps, optim_cfg.lr_scheduler_type
    if warmup <= 0:
        warmup = int(optim_cfg.lr_warmup_steps_ratio * max(total, 0))
    min_ratio = optim_cfg.min_lr_ratio
    if style not in ("constant", "cosine"):
        raise ValueError(f"optim.lr_scheduler_type must be constant or cosine, got {style!r}")
    if style == "cosine" and total <= 0:
        raise ValueError("optim.lr_scheduler_type=cosine needs optim.total_training_steps > 0")

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if style == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
