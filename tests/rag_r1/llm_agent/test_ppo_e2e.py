"""Two PPO steps in multi-query mode through the REAL trainer (Ray, FSDP workers, HF rollout) with
the tiny random model, the search agent loop, a real BM25 retrieval server and RAG-R1's reward."""
from __future__ import annotations

import pytest
import ray

from rag_r1.llm_agent.modes import build_mode
from scripts.data_process.search_data import convert_questions, write_parquet
from verl.trainer.config import compose_config
from verl.trainer.main_ppo import build_trainer
from verl.utils.tracking import Tracking

QUESTIONS = [{"question": "Who discovered penicillin", "golden_answers": ["Alexander Fleming"]},
             {"question": "Where is the Eiffel Tower", "golden_answers": ["Paris"]},
             {"question": "Which volcano is the highest mountain in Africa", "golden_answers": ["Kilimanjaro"]},
             {"question": "Who wrote nine symphonies", "golden_answers": ["Beethoven"]}]


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_two_ppo_steps_multi_query(tmp_path, tiny_model_dir, retrieval_server, ray_session):
    for split in ("train", "test"):
        write_parquet(convert_questions(QUESTIONS, "hotpotqa", build_mode("multi"), split), tmp_path / f"{split}.parquet")
    config = compose_config([
        f"data.train_files={tmp_path / 'train.parquet'}", f"data.val_files={tmp_path / 'test.parquet'}",
        "data.train_batch_size=2", "data.val_batch_size=2", "data.max_prompt_length=2048",
        "data.max_start_length=1024", "data.max_response_length=8",
        f"actor_rollout_ref.model.path={tiny_model_dir}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.state_masking=true",
        "actor_rollout_ref.rollout.loop=rag_r1.llm_agent.loop:SearchAgentLoop",
        "critic.ppo_mini_batch_size=2", "critic.ppo_micro_batch_size_per_gpu=2",
        "algorithm.adv_estimator=gae", "algorithm.use_kl_in_reward=true",
        "agent.mode=multi", "agent.max_turns=1", "agent.max_obs_length=64", "agent.topk=1",
        f"retriever.url={retrieval_server.url}",
        "custom_reward_function.path=rag_r1.reward:compute_score",
        "trainer.total_training_steps=2", "trainer.val_before_train=true", "trainer.test_freq=-1",
        "trainer.logger=[console]", f"trainer.default_local_dir={tmp_path / 'ckpt'}",
    ])
    history = build_trainer(config, tracker=Tracking("t", "t", backends=[])).fit()
    steps = [h for h in history if "step" in h and "env/turns_mean" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        # a random model writes no action in 8 tokens: one invalid turn, then the final turn
        assert h["env/turns_mean"] == 2.0 and h["env/search_calls_mean"] == 0.0
        assert {"env/valid_action_ratio", "env/answered_ratio", "env/queries_per_call", "reward/f1",
                "actor/pg_loss", "critic/vf_loss"} <= set(h)
    assert "val/env/turns_mean" in history[0]
