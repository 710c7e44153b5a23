"""actor_rollout_ref.rollout.mode=async through the trainer: two PPO steps with the tiny model, the
REAL actor and critic workers (FSDP2 over one gloo rank in this process, as a one-rank worker group
hands them its calls), the actor hosting its rollout server, SearchAgentLoop and a scripted retriever, against mode=sync.

Greedy decoding, so both modes must give the same trajectories: token for token, log-probs within
1e-4 (the batch engine and the server pad their batches differently: float rounding only). The
second step's rollouts come from the updated weights, which reach the server once per step.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from rag_r1.llm_agent.loop import SearchAgentLoop
from rag_r1.llm_agent.modes import build_mode
from scripts.data_process.search_data import convert_questions, write_parquet
from test_generation import FakeRetriever
from verl.trainer.config import compose_config
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.trainer.ppo.reward import RewardManager, load_reward_function
from verl.trainer.ppo.rollout_servers import ServerPool
from verl.utils.dataset import RLHFDataset
from verl.utils.tracking import Tracking
from verl.workers.fsdp_workers import ActorRolloutRefWorker, CriticWorker

QUESTIONS = ["Who wrote the novel", "Where is the tower"]
STEPS = 2


def first_question_and_letters(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """1 for the first question, plus the share of "e" in the response: greedy samples of one prompt
    are alike, so the advantages must come from the difference between prompts."""
    return float(extra_info["index"] == 0) + solution_str.count("e") / max(len(solution_str), 1)


def run(tmp_path: Path, model_dir, mode: str):
    """Two steps in `mode`: (history, the trained batches, the server's weight loads or None)."""
    data = tmp_path / "train.parquet"
    write_parquet(convert_questions([{"question": q, "golden_answers": ["x"]} for q in QUESTIONS], "toy",
                                    build_mode("multi"), "train"), data)
    config = compose_config([
        f"data.train_files={data}", f"data.val_files={data}", f"data.train_batch_size={len(QUESTIONS)}",
        "data.shuffle=false", "data.max_prompt_length=1024", "data.max_start_length=512", "data.max_response_length=8",
        f"actor_rollout_ref.model.path={model_dir}", "actor_rollout_ref.actor.optim.lr=5e-2",
        "actor_rollout_ref.actor.fsdp_config.dtype=float32", "critic.model.fsdp_config.dtype=float32",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={len(QUESTIONS)}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8", "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.do_sample=false", f"actor_rollout_ref.rollout.mode={mode}",
        "actor_rollout_ref.rollout.loop=rag_r1.llm_agent.loop:SearchAgentLoop", "critic.optim.lr=1e-2",
        f"critic.ppo_mini_batch_size={len(QUESTIONS)}", "critic.ppo_micro_batch_size_per_gpu=8",
        "algorithm.adv_estimator=gae", "agent.mode=multi", "agent.max_turns=1",
        "retriever.url=http://127.0.0.1:1/retrieve",  # replaced by a scripted retriever below
        f"custom_reward_function.path={Path(__file__).resolve()}", "custom_reward_function.name=first_question_and_letters",
        f"trainer.total_training_steps={STEPS}", "trainer.val_before_train=false", "trainer.logger=[console]",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}"])
    OmegaConf.resolve(config)
    with open_dict(config):
        config.actor_rollout_ref.actor.optim.total_training_steps = STEPS
    torch.manual_seed(0)
    worker = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor_rollout")
    worker.init_model()
    tokenizer = worker.tokenizer
    servers, generate, loads = None, worker.generate_sequences, None
    if mode == "async":
        servers = ServerPool.of_local_worker(worker, config.actor_rollout_ref.rollout, tokenizer.pad_token_id)
        generate = servers.generate_batch
        loads = []
        server = worker.server_host.server
        update = server.update_weights
        server.update_weights = lambda weights: loads.append(1) or update(weights)
    reward = RewardManager(tokenizer, load_reward_function(config.custom_reward_function.path,
                                                           config.custom_reward_function.name), num_examine=0)
    with open_dict(config):
        config.critic.optim.total_training_steps = STEPS
    torch.manual_seed(0)  # the value head starts the same in both modes
    critic = CriticWorker(config.critic)
    critic.init_model()
    trainer = RayPPOTrainer(config, tokenizer, worker, critic, reward, None,
                            RLHFDataset(config.data.train_files, tokenizer, config.data), None,
                            tracker=Tracking("t", "t", backends=[]), servers=servers)
    trainer.rollout_loop = SearchAgentLoop(config, tokenizer, generate, retriever=FakeRetriever(), servers=servers)
    batches = []
    rollout = trainer.rollout

    def recorded(prompts):
        batch, metrics = rollout(prompts)
        batches.append(batch)
        return batch, metrics

    trainer.rollout = recorded
    return trainer.fit(), batches, loads


def test_async_mode_gives_sync_modes_trajectories_and_step(tmp_path, tiny_model_dir, one_rank):  # noqa: F811
    sync_history, sync_batches, _ = run(tmp_path / "sync", tiny_model_dir, "sync")
    history, batches, loads = run(tmp_path / "async", tiny_model_dir, "async")
    assert loads == [1, 1]  # the weights reached the server once per step
    # rollout.lag=0: each step samples with the weights of the last update (the versions count updates)
    assert [set(b.non_tensor_batch["weights_version"].tolist()) for b in batches] == [{0}, {1}]
    for mine, theirs in zip(batches, sync_batches, strict=True):
        for key in ("prompts", "responses", "response_mask", "info_mask", "input_ids", "attention_mask"):
            assert torch.equal(mine.batch[key], theirs.batch[key]), key
        assert (mine.batch["rollout_log_probs"] - theirs.batch["rollout_log_probs"]).abs().max() < 1e-4
        for key in ("turns", "search_calls", "valid_actions"):
            assert list(mine.non_tensor_batch[key]) == list(theirs.non_tensor_batch[key])
    # the update changed what the greedy policy writes: step 2 shows the new weights in both modes
    assert not torch.equal(batches[0].batch["responses"], batches[1].batch["responses"])
    for mine, theirs in zip(history, sync_history, strict=True):
        for key in [k for k in theirs if k.startswith(("env/", "critic/score", "critic/advantages"))]:
            assert mine[key] == pytest.approx(theirs[key], abs=1e-4), key
        assert mine["actor/pg_loss"] == pytest.approx(theirs["actor/pg_loss"], abs=1e-4)
