"""rollout.mode=async on the driver: the ServerPool spreads trajectories over the workers' servers
(all turns of one on the same server), runs batch calls as one request per row, and the trainer
wakes the servers before every rollout; the config accepts the mode and veRL's tool config."""
from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoTokenizer

from inprocess_fake_workers import InProcessFakeActorRolloutRefWG
from ppo_test_setup import tiny_config
from verl.trainer.config import compose_config, schema_node
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.trainer.ppo.reward import RewardManager, load_reward_function
from verl.trainer.ppo.rollout_loop import SingleTurnLoop, load_rollout_loop
from verl.trainer.ppo.rollout_servers import ServerPool, actor_concurrency
from verl.utils.dataset import RLHFDataset
from verl.utils.tracking import Tracking
from verl.workers.rollout.base import build_prompt_batch
from verl.workers.rollout.server import GenerationOutput, SamplingSettings


class CountingServer:
    """Answers a request with the tokens after its prompt's last one (as many as asked, at most 3),
    each with log-prob -0.5; records (request id, prompt, settings)."""

    def __init__(self):
        self.requests: list[tuple[str, list[int], SamplingSettings]] = []

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingSettings) -> GenerationOutput:
        self.requests.append((request_id, list(prompt_ids), params))
        await asyncio.sleep(0)
        n = min(3, params.max_new_tokens)
        return GenerationOutput([prompt_ids[-1] + k for k in range(1, n + 1)], [-0.5] * n, "length")


def rollout_node(**values):
    return schema_node("actor_rollout_ref.rollout", {"mode": "async", "response_length": 4, **values})


def pool_of(servers: list[CountingServer], wakes: list | None = None, **rollout) -> ServerPool:
    def wake() -> list[int]:
        (wakes if wakes is not None else []).append(1)
        return [0] * len(servers)

    return ServerPool([s.generate for s in servers], wake, rollout_node(**rollout), pad_token_id=0)


def test_a_trajectorys_turns_stay_on_its_server_and_new_ones_go_to_the_least_loaded():
    servers = [CountingServer(), CountingServer()]
    wakes = []
    pool = pool_of(servers, wakes)
    params = SamplingSettings(4, False, 1.0, 1.0, -1)

    async def turns():
        for turn in range(2):  # each trajectory's second turn follows its first
            await asyncio.gather(*(pool.generate(f"t{i}", [10 * i + turn], params) for i in range(3)))

    pool.wake()
    pool.run(turns())
    on = [{rid for rid, _, _ in s.requests} for s in servers]
    assert on == [{"t0", "t2"}, {"t1"}] and [len(s.requests) for s in servers] == [4, 2]
    pool.wake()  # a new rollout starts a new assignment
    pool.run(pool.generate("t9", [1], params))
    assert servers[0].requests[-1][0] == "t9" and wakes == [1, 1]


def test_a_wake_notes_the_weights_version_the_servers_hold_and_refuses_a_split():
    answers = [[3, 3], [4, 5]]  # what the workers' wake_server returns, one per rank
    pool = ServerPool([CountingServer().generate, CountingServer().generate], lambda: answers.pop(0),
                      rollout_node(), pad_token_id=0)
    assert pool.weights_version is None
    pool.wake()
    assert pool.weights_version == 3
    with pytest.raises(RuntimeError, match=r"different weights versions: \[4, 5\]"):
        pool.wake()


def test_a_batch_call_is_one_request_per_row_with_the_batch_settings():
    server = CountingServer()
    pool = pool_of([server], do_sample=True, temperature=0.7, top_p=0.9)
    prompts = build_prompt_batch([[5], [3, 4], [9, 9, 20]], pad_token_id=0)
    prompts.meta_info = {"max_new_tokens": 5, "stop": ["</search>"], "do_sample": False}
    out = pool.generate_batch(prompts)
    assert out.batch["responses"].tolist() == [[6, 7, 8, 0, 0], [5, 6, 7, 0, 0], [21, 22, 23, 0, 0]]
    assert out.batch["rollout_log_probs"].tolist() == [[-0.5] * 3 + [0.0] * 2] * 3
    assert out.batch["response_mask"].sum(-1).tolist() == [3, 3, 3]
    assert torch.equal(out.batch["prompts"], prompts.batch["input_ids"])
    assert sorted(p for _, p, _ in server.requests) == [[3, 4], [5], [9, 9, 20]]
    params = {s for _, _, s in server.requests}
    assert params == {SamplingSettings(5, False, 0.7, 0.9, -1, ("</search>",))}  # meta wins, the rest from config
    assert len({rid for rid, _, _ in server.requests}) == 3


def test_single_turn_loop_runs_in_async_mode_through_the_servers():
    server = CountingServer()
    pool = pool_of([server])
    config = schema_node("", {"data": {"max_response_length": 3}, "actor_rollout_ref": {"rollout": {"mode": "async"}}})
    loop = load_rollout_loop(config, tokenizer=None, generate=pool.generate_batch, servers=pool)
    assert isinstance(loop, SingleTurnLoop) and loop.servers is pool
    out = loop.run(build_prompt_batch([[1, 2], [7]], pad_token_id=0))
    assert out.batch["responses"].tolist() == [[3, 4, 5], [8, 9, 10]]
    assert out.batch["info_mask"].sum() == 0 and out.batch["rollout_log_probs"].sum() == -3.0


def test_the_trainer_wakes_the_servers_before_every_rollout(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, "grpo", ["actor_rollout_ref.rollout.mode=async",
                                                            "trainer.total_training_steps=2"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reward = RewardManager(tokenizer, load_reward_function(config.custom_reward_function.path,
                                                           config.custom_reward_function.name))
    server, wakes = CountingServer(), []
    pool = ServerPool([server.generate], lambda: wakes.append(len(server.requests)) or [0],
                      config.actor_rollout_ref.rollout, tokenizer.pad_token_id)
    trainer = RayPPOTrainer(config, tokenizer, InProcessFakeActorRolloutRefWG(tiny_model_dir, tokenizer,
                                                                              config.actor_rollout_ref),
                            None, reward, reward, RLHFDataset(config.data.train_files, tokenizer, config.data),
                            RLHFDataset(config.data.val_files, tokenizer, config.data),
                            tracker=Tracking("t", "t", backends=[]), servers=pool)
    assert trainer.rollout_loop.generate == pool.generate_batch
    history = trainer.fit()
    # validation before training (3 batches of 5 rows), then two steps of 8 prompts x 4 samples: a wake
    # before each rollout, the requests counted when it came
    assert wakes == [0, 2, 4, 5, 37]
    assert len(server.requests) == 69 and [h["step"] for h in history] == [0, 1, 2]


REQUIRED = ["data.train_files=t.parquet", "data.val_files=v.parquet", "actor_rollout_ref.model.path=m",
            "custom_reward_function.path=r.py"]
SEARCH_AGENT = "actor_rollout_ref.rollout.loop=rag_r1.llm_agent.loop:SearchAgentLoop"


def test_async_mode_and_the_tool_config_compose(tmp_path):
    tools = tmp_path / "search_tool_config.yaml"
    tools.write_text("tools: []\n")
    config = compose_config(REQUIRED + ["actor_rollout_ref.rollout.mode=async", SEARCH_AGENT,
                                        f"actor_rollout_ref.rollout.multi_turn.tool_config_path={tools}",
                                        "actor_rollout_ref.rollout.multi_turn.format=hermes",
                                        "actor_rollout_ref.rollout.max_num_seqs=16"])
    assert config.actor_rollout_ref.rollout.mode == "async"
    assert config.actor_rollout_ref.rollout.multi_turn.tool_config_path == str(tools)
    assert actor_concurrency(config.actor_rollout_ref.rollout) == 20
    assert actor_concurrency(compose_config(REQUIRED).actor_rollout_ref.rollout) == 1


@pytest.mark.parametrize("overrides, message", [
    (["actor_rollout_ref.rollout.mode=batch"], "actor_rollout_ref.rollout.mode='batch': expected sync | async"),
    (["actor_rollout_ref.rollout.multi_turn.tool_config_path=TOOLS"], "tool_config_path=TOOLS needs a multi-turn "
     "actor_rollout_ref.rollout.loop that calls tools"),
    ([SEARCH_AGENT, "actor_rollout_ref.rollout.multi_turn.tool_config_path=missing.yaml"],
     "tool_config_path=missing.yaml: no such file"),
    (["actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.mode=async",
      "actor_rollout_ref.rollout.tensor_model_parallel_size=2"], "tensor_model_parallel_size=2 is not supported with "
     "rollout.name=vllm, mode=async"),
    (["actor_rollout_ref.rollout.multi_turn.format=qwen"], "multi_turn.format=qwen is not supported here: tool "
     "calls are parsed as hermes writes them"),
])
def test_what_async_mode_cannot_run_is_refused_naming_the_key(tmp_path, overrides, message):
    tools = tmp_path / "tools.yaml"
    tools.write_text("tools: []\n")
    overrides = [o.replace("TOOLS", str(tools)) for o in overrides]
    with pytest.raises(ValueError, match=message.replace("TOOLS", str(tools)).replace("(", r"\(")):
        compose_config(REQUIRED + overrides)
