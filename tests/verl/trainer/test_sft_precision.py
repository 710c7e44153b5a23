"""The SFT trainer in bf16 on one process: fp32 weights and Adam's states, the forward under
torch.autocast, the loss in fp32 near the fp32 model's, and a step lowers it as in fp32."""
from __future__ import annotations

import pytest
import torch
from test_fsdp_sft_trainer import dataset, load_model, sft_file  # noqa: F401  (fixtures)

from verl.trainer.fsdp_sft_trainer import FSDPConfig, ModelConfig, build_model, masked_nll_sum, train_step


def built(model_dir, dtype: str) -> torch.nn.Module:
    return build_model(str(model_dir), ModelConfig(str(model_dir), fsdp_config=FSDPConfig(dtype=dtype)), "cpu",
                       world_size=1)


def test_a_bf16_model_keeps_fp32_weights_and_scores_near_the_fp32_one(tiny_model_dir, dataset):  # noqa: F811
    model, fp32 = built(tiny_model_dir, "bfloat16"), load_model(tiny_model_dir)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    batch = dataset.collate([dataset[i] for i in range(4)])
    projected = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda module, args, out: projected.append(out.dtype))
    with torch.no_grad():
        nll, _ = masked_nll_sum(model, batch)
        want, _ = masked_nll_sum(fp32, batch)
    assert projected == [torch.bfloat16]  # the linear layers ran in bf16
    assert nll.dtype == torch.float32
    # bf16's rounding moves the summed NLL by a little (measured 9e-6 relative), and by more than nothing
    assert 0 < abs(nll.item() - want.item()) / want.item() < 1e-3


def test_a_bf16_step_lowers_the_loss_as_an_fp32_step_does(tiny_model_dir, dataset):  # noqa: F811
    batch = dataset.collate([dataset[i] for i in range(4)])
    drops = {}
    for dtype in ("float32", "bfloat16"):
        model = built(tiny_model_dir, dtype)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = [train_step(model, optimizer, [batch], clip_grad=1.0)["train/loss"] for _ in range(3)]
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert {s["exp_avg"].dtype for s in optimizer.state.values()} == {torch.float32}
        drops[dtype] = losses[0] - losses[-1]
    assert drops["float32"] > 0.5  # from about 5.99 nats per token (measured 1.44 in fp32, 1.43 in bf16)
    assert drops["bfloat16"] == pytest.approx(drops["float32"], rel=0.02)
