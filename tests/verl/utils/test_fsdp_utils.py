"""Learning-rate schedules of verl.utils.fsdp_utils (the FSDP parts run in tests/verl/workers)."""
from __future__ import annotations

import math

import pytest
import torch
from verl.trainer.config import schema_node
from verl.utils.fsdp_utils import build_lr_scheduler


def lrs(steps: int, **optim) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_lr_scheduler(opt, schema_node("actor_rollout_ref.actor.optim", {"lr": 1.0, **optim}))
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_constant_with_warmup_ratio():
    # total 10, ratio 0.3 -> 3 warm-up steps: 0/3, 1/3, 2/3, then 1
    got = lrs(5, total_training_steps=10, lr_warmup_steps_ratio=0.3, warmup_style="constant")
    assert got == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1.0])


def test_explicit_warmup_steps_win_and_no_warmup_is_flat():
    assert lrs(3, total_training_steps=10, lr_warmup_steps=2, lr_warmup_steps_ratio=0.9) == pytest.approx([0, 0.5, 1])
    assert lrs(3, total_training_steps=-1) == [1.0, 1.0, 1.0]


def test_cosine_after_warmup_to_floor():
    # warm-up 2 of 6 steps, then cosine over 4 steps from 1 to min_lr_ratio 0.1
    got = lrs(7, total_training_steps=6, lr_warmup_steps=2, warmup_style="cosine", min_lr_ratio=0.1)
    cos = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert got == pytest.approx([0.0, 0.5] + cos)


def test_cosine_needs_total_steps():
    with pytest.raises(ValueError, match="total_training_steps"):
        lrs(1, warmup_style="cosine")
