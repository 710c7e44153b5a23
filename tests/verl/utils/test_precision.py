"""The compute dtype a config names: auto by the machine, veRL's spellings, FSDP2's policy."""
from __future__ import annotations

import re

import pytest
import torch

from verl.utils import precision
from verl.utils.fsdp_utils import mixed_precision_policy


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set which bf16 instructions this CPU reports: cpu_bf16(avx512_bf16, amx)."""
    def set_flags(avx512_bf16: bool, amx: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    return set_flags


@pytest.mark.parametrize("avx512_bf16, amx, on_cpu", [
    (True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, torch.float32)])
def test_auto_is_bf16_on_gpu_and_on_a_cpu_with_bf16_instructions_else_fp32(cpu_bf16, avx512_bf16, amx, on_cpu):
    cpu_bf16(avx512_bf16, amx)
    assert precision.compute_dtype("auto", use_gpu=False) == on_cpu
    assert precision.engine_dtype("auto", use_gpu=False) == on_cpu
    assert precision.compute_dtype("auto", use_gpu=True) == torch.bfloat16


def test_named_dtypes_are_the_same_on_every_machine(cpu_bf16):
    cpu_bf16(False, False)
    assert [precision.compute_dtype(name, use_gpu=False) for name in ("bfloat16", "bf16", "float32", "fp32")] == \
        [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    assert precision.engine_dtype("fp16", use_gpu=True) == torch.float16


def test_training_refuses_fp16_which_an_engine_may_run_in():
    with pytest.raises(ValueError, match=re.escape("dtype 'float16': expected auto | bfloat16 | bf16 | float32 | fp32")):
        precision.compute_dtype("float16", use_gpu=True)
    with pytest.raises(ValueError, match="dtype 'half'"):
        precision.engine_dtype("half", use_gpu=True)
    assert precision.dtype_problems("a.dtype", "fp16") == ["a.dtype='fp16': expected auto | bfloat16 | bf16 | "
                                                          "float32 | fp32"]
    assert precision.dtype_problems("a.dtype", "fp16", precision.ENGINE_DTYPES) == []
    assert precision.dtype_problems("a.dtype", "auto") == []


def test_an_engine_that_merges_an_adapter_is_fp32_under_auto_only(cpu_bf16):
    cpu_bf16(True, True)
    assert precision.engine_dtype("auto", use_gpu=True, merges_adapter=True) == torch.float32
    assert precision.engine_dtype("auto", use_gpu=False, merges_adapter=True) == torch.float32
    assert precision.engine_dtype("bfloat16", use_gpu=True, merges_adapter=True) == torch.bfloat16  # as asked


def test_a_small_adapter_update_merged_in_bf16_is_mostly_rounded_away():
    from verl.utils.lora import merged_state_dict

    torch.manual_seed(0)
    w0 = torch.randn(64, 64) * 0.03  # a trained weight's scale
    a, b = torch.randn(4, 64), torch.randn(64, 4) * 1e-4 / 4  # B @ A of scale 1e-4
    delta = b @ a

    def merged_update(dtype):
        state = {"q.base_layer.weight": w0.to(dtype), "q.lora_A.default.weight": a, "q.lora_B.default.weight": b}
        return merged_state_dict(state, scaling=1.0)["q.weight"].float() - w0.to(dtype).float()

    def lost(dtype):  # the share of the update the merge did not keep
        return float((merged_update(dtype) - delta).abs().sum() / delta.abs().sum())

    assert lost(torch.float32) < 1e-3
    assert lost(torch.bfloat16) > 0.5


def test_dtype_names_are_the_ones_vllm_takes():
    assert [precision.dtype_name(d) for d in (torch.bfloat16, torch.float16, torch.float32)] == \
        ["bfloat16", "float16", "float32"]


@pytest.mark.parametrize("name, param_dtype", [("bfloat16", torch.bfloat16), ("fp32", torch.float32)])
def test_fsdp_gathers_in_the_compute_dtype_and_reduces_gradients_in_fp32(name, param_dtype):
    policy = mixed_precision_policy(name, use_gpu=False)
    assert (policy.param_dtype, policy.reduce_dtype) == (param_dtype, torch.float32)
