"""actor_rollout_ref.rollout.seed seeds an actor worker before it builds its LoRA adapters: the same
seed gives the same initial adapter, another seed another one."""
from __future__ import annotations

import torch

from verl.trainer.config import schema_node
from verl.utils.lora import ADAPTER_KEY
from verl.workers.fsdp_workers import ActorRolloutRefWorker


def initial_adapter(model_dir, seed: int) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a one-rank actor worker built with rollout.seed=`seed`, after init_model."""
    config = schema_node("actor_rollout_ref", {
        "model": {"path": str(model_dir), "lora_rank": 4, "lora_alpha": 8},
        "actor": {"ppo_mini_batch_size": 2},
        "rollout": {"seed": seed}})
    worker = ActorRolloutRefWorker(config, role="actor")
    with torch.random.fork_rng():  # init_model reseeds this process's generator
        worker.init_model()
    return {name: p.detach().clone() for name, p in worker.module.named_parameters() if ADAPTER_KEY in name}


def test_the_rollout_seed_decides_the_initial_lora_adapter(one_rank, tiny_model_dir):
    first, again, other = (initial_adapter(tiny_model_dir, seed) for seed in (3, 3, 4))
    # peft draws A at random and starts B at zero: the seed shows in the A matrices
    drawn = [name for name in first if "lora_A" in name]
    assert drawn and first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not any(torch.equal(first[name], other[name]) for name in drawn)
