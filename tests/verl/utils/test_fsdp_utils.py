"""verl.utils.fsdp_utils: learning-rate schedules, gradient clipping over FSDP2 shards (2 ranks over
gloo against torch on the whole model), and where Adam's states go with optimizer_offload. The
FSDP2 wrapping of real models runs in tests/verl/workers."""
from __future__ import annotations

import math
import sys

import pytest
import ray
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from verl.single_controller.base import Dispatch, Worker, register
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
from verl.trainer.config import schema_node
from verl.utils.fsdp_utils import build_lr_scheduler, clip_grad_norm, move_optimizer_state, moves_optimizer_state

# Ray would import this test module by name in the workers, where tests/ is not on the path.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


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
    got = lrs(5, total_training_steps=10, lr_warmup_steps_ratio=0.3, lr_scheduler_type="constant")
    assert got == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1.0])


def test_explicit_warmup_steps_win_and_no_warmup_is_flat():
    assert lrs(3, total_training_steps=10, lr_warmup_steps=2, lr_warmup_steps_ratio=0.9) == pytest.approx([0, 0.5, 1])
    assert lrs(3, total_training_steps=-1) == [1.0, 1.0, 1.0]


def test_cosine_after_warmup_to_floor():
    # warm-up 2 of 6 steps, then cosine over 4 steps from 1 to min_lr_ratio 0.1
    got = lrs(7, total_training_steps=6, lr_warmup_steps=2, lr_scheduler_type="cosine", min_lr_ratio=0.1)
    cos = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert got == pytest.approx([0.0, 0.5] + cos)


def test_cosine_needs_total_steps():
    with pytest.raises(ValueError, match="total_training_steps"):
        lrs(1, lr_scheduler_type="cosine")


def mlp() -> torch.nn.Sequential:
    """Rows 5 and 3 split unevenly over 2 ranks (3 + 2, 2 + 1): shards of different sizes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def mlp_loss(model: torch.nn.Module) -> torch.Tensor:
    x = torch.linspace(-1.0, 1.0, 24).reshape(6, 4)
    return (model(x) ** 2).sum()


class ShardedMLP(Worker):
    """`mlp` sharded with FSDP2 over the worker group's gloo group, each linear layer and the root."""

    def __init__(self):
        super().__init__()
        self.model = mlp()
        mesh = init_device_mesh("cpu", (self.world_size,))
        for layer in self.model[0], self.model[2]:
            fully_shard(layer, mesh=mesh)
        fully_shard(self.model, mesh=mesh)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def clipped_grads(self, max_norm: float) -> tuple[float, dict[str, torch.Tensor]]:
        """Every rank the same batch: FSDP averages equal gradients, so they are one process's."""
        self.model.zero_grad(set_to_none=True)
        mlp_loss(self.model).backward()
        local_sizes = [p.grad.to_local().shape[0] for p in self.model.parameters()]
        assert local_sizes == ([3, 3, 2, 2] if self.rank == 0 else [2, 2, 1, 1]), local_sizes
        norm = clip_grad_norm(self.model.parameters(), max_norm)
        return norm, {name: p.grad.full_tensor() for name, p in self.model.named_parameters()}


@pytest.fixture(scope="module")
def sharded_mlp(ray_local):
    return RayWorkerGroup(RayResourcePool([2], use_gpu=False), RayClassWithInitArgs(ShardedMLP))


@pytest.mark.parametrize("share", [0.25, 2.0])  # max_norm below the norm (clipped) and above it (untouched)
def test_clipping_sharded_gradients_equals_torch_on_the_whole_model(sharded_mlp, share):
    whole = mlp()
    mlp_loss(whole).backward()
    norm = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in whole.parameters()])))
    expected_norm = float(torch.nn.utils.clip_grad_norm_(whole.parameters(), share * norm))
    assert expected_norm == pytest.approx(norm, rel=1e-6)
    for got_norm, grads in sharded_mlp.clipped_grads(share * norm):
        assert got_norm == pytest.approx(expected_norm, rel=1e-6)
        for name, p in whole.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7)
    clipped = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads.values()])))
    assert clipped == pytest.approx(min(share, 1.0) * norm, rel=1e-5)


def test_clipping_plain_gradients_needs_no_process_group():
    whole, reference = mlp(), mlp()
    for model in whole, reference:
        mlp_loss(model).backward()
    expected = float(torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5))
    assert clip_grad_norm(whole.parameters(), 0.5) == pytest.approx(expected, rel=1e-6)
    for p, q in zip(whole.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("param_offload", [False, True])
@pytest.mark.parametrize("optimizer_offload", [False, True])
@pytest.mark.parametrize("use_gpu", [False, True])
def test_only_optimizer_offload_on_gpu_moves_adams_states(param_offload, optimizer_offload, use_gpu):
    fsdp_cfg = schema_node("actor_rollout_ref.actor.fsdp_config",
                           {"param_offload": param_offload, "optimizer_offload": optimizer_offload})
    # with param_offload the step already runs on the CPU shards, Adam's states beside them
    assert moves_optimizer_state(fsdp_cfg, use_gpu) == (use_gpu and optimizer_offload and not param_offload)


def adam_after_one_step() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mlp_loss(model).backward()
    optimizer.step()
    return model, optimizer


def test_moving_the_optimizer_state_moves_the_moments_not_the_step_counter():
    _, optimizer = adam_after_one_step()
    move_optimizer_state(optimizer, torch.device("meta"))
    for state in optimizer.state.values():
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert state["exp_avg"].is_meta and state["exp_avg_sq"].is_meta
        assert state["step"].device == torch.device("cpu") and float(state["step"]) == 1.0


def test_a_step_after_a_round_trip_of_the_states_equals_one_without():
    moved, moved_optimizer = adam_after_one_step()
    kept, kept_optimizer = adam_after_one_step()
    move_optimizer_state(moved_optimizer, "cpu")  # what an offloaded update does around its steps
    move_optimizer_state(moved_optimizer, torch.device("cpu"))
    for model, optimizer in (moved, moved_optimizer), (kept, kept_optimizer):
        optimizer.zero_grad()
        mlp_loss(model).backward()
        optimizer.step()
    for p, q in zip(moved.parameters(), kept.parameters()):
        assert torch.equal(p, q)
    assert [float(s["step"]) for s in moved_optimizer.state.values()] == [2.0] * 4
