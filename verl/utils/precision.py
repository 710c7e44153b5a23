"""The dtype a model computes in, from the name a config gives it (veRL's `fsdp_config.dtype` and
`rollout.dtype`).

`auto` picks bf16 where it pays: on a GPU, and on a CPU with bf16 matrix instructions (AVX512-BF16
or AMX), where bf16 matmuls run about 3x faster than fp32 ones. A CPU without them would emulate
bf16 and run slower than fp32, so there `auto` is fp32. Whatever the compute dtype, training keeps
fp32 master weights and reduces gradients in fp32, and log-probs, entropies and losses are computed
in fp32 from the logits.
"""
from __future__ import annotations

import torch

# Names of the training dtypes (veRL spells them both ways). fp16 is left out: training in it would
# need loss scaling.
TRAINING_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
                   "fp32": torch.float32}
# A generation engine may also run in fp16 (a GPU without bf16).
ENGINE_DTYPES = {**TRAINING_DTYPES, "float16": torch.float16, "fp16": torch.float16}
AUTO = "auto"


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX tiles)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def compute_dtype(name: str, use_gpu: bool) -> torch.dtype:
    """The torch dtype a training config's `name` (auto or one of TRAINING_DTYPES) stands for here."""
    return _resolve(name, use_gpu, TRAINING_DTYPES)


def engine_dtype(name: str, use_gpu: bool, merges_adapter: bool = False) -> torch.dtype:
    """The torch dtype a generation engine's `name` (auto or one of ENGINE_DTYPES) stands for here.
    An engine that merges a LoRA adapter into its weights (`merges_adapter`) is fp32 under auto: in
    bf16 the merge rounds a small update of the adapter away (most of an update of 1e-4 on weights of
    0.03), and the engine would sample from a policy other than the one being trained."""
    if name == AUTO and merges_adapter:
        return torch.float32
    return _resolve(name, use_gpu, ENGINE_DTYPES)


def _resolve(name: str, use_gpu: bool, names: dict[str, torch.dtype]) -> torch.dtype:
    if name == AUTO:
        return torch.bfloat16 if use_gpu or cpu_has_bf16_matmul() else torch.float32
    if name not in names:
        raise ValueError(f"dtype {name!r}: expected {' | '.join([AUTO, *names])}")
    return names[name]


def dtype_problems(key: str, name: str, names: dict[str, torch.dtype] = TRAINING_DTYPES) -> list[str]:
    """[] when `name` is a dtype `compute_dtype` knows, else the problem naming `key`."""
    return [] if name == AUTO or name in names else [f"{key}={name!r}: expected {' | '.join([AUTO, *names])}"]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16": the name vLLM and HF take."""
    return str(dtype).removeprefix("torch.")
