"""VLLMRollout and its weight sync against a stand-in `vllm` built from the pinned release's API
(tests/fake_vllm.py, from tests/fixtures/vllm_api.json; no GPU here).

Checked: the engine arguments, sampling parameters and requests we build are ones the pinned vLLM
takes; outputs become padded batches with the sampled tokens' log-probs; and the worker loads each
version of the actor's weights into the engine once: an agent's turns reuse them, the engine sleeps
only when training starts, and loads again only after an update or a checkpoint load.
"""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from fake_vllm import Call, fake_vllm_modules
from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.generation import INFO_OPEN, GenerationManager
from verl.trainer.config import rollout_config, schema_node
from verl.workers.rollout import vllm_rollout
from verl.workers.rollout.base import assemble_output, build_prompt_batch, response_token_lists
from verl.workers.sharding_manager import FSDPVLLMShardingManager


def no_tokens(prompt_token_ids, params):
    return []


@pytest.fixture
def install_vllm(monkeypatch):
    """install_vllm(respond): the stand-in vllm in sys.modules, and this process taken for a GPU worker."""
    monkeypatch.setattr(vllm_rollout, "device", lambda: torch.device("cuda", 0))

    def install(respond):
        for name, module in fake_vllm_modules(respond).items():
            monkeypatch.setitem(sys.modules, name, module)
        return sys.modules["vllm"]

    return install


def names(calls: list[Call]) -> list[str]:
    return [call.name for call in calls]


def test_fake_vllm_refuses_what_the_pinned_release_does_not_take():
    vllm = fake_vllm_modules(no_tokens)["vllm"]
    with pytest.raises(TypeError, match="enforce_eagre"):
        vllm.LLM(model="m", enforce_eagre=True)
    with pytest.raises(TypeError, match="data_parallel_sise"):
        vllm.LLM(model="m", data_parallel_sise=2)
    with pytest.raises(ValueError, match="logprobs_mode='processed_logprob'"):
        vllm.LLM(model="m", logprobs_mode="processed_logprob")
    with pytest.raises(ValueError, match="dtype='bf16'"):
        vllm.LLM(model="m", dtype="bf16")
    llm = vllm.LLM(model="m", enable_sleep_mode=True, logprobs_mode="processed_logprobs")  # EngineArgs fields
    with pytest.raises(TypeError, match="LLM.sleep.*levl"):
        llm.sleep(levl=2)
    with pytest.raises(TypeError, match="LLM.generate.*prompts"):
        llm.generate(use_tqdm=False)
    with pytest.raises(AttributeError):
        llm.update_weights  # an AsyncLLM method; LLM has none of that name
    with pytest.raises(TypeError, match="max_token"):
        vllm.SamplingParams(max_token=3)
    with pytest.raises(TypeError, match="prompt_ids"):
        vllm.TokensPrompt(prompt_ids=[1])
    with pytest.raises(TypeError, match="missing required key.*prompt_token_ids"):
        vllm.TokensPrompt(prompt="x")
    params = vllm.SamplingParams(max_tokens=3, logprobs=0)
    assert (params.max_tokens, params.logprobs, params.temperature) == (3, 0, 1.0)  # 1.0: the release's default
    assert llm.calls == []


def test_fake_engine_generates_only_awake_with_loaded_weights():
    vllm = fake_vllm_modules(lambda ids, params: [(t + 1, -0.5) for t in ids])["vllm"]
    llm = vllm.LLM(model="m", enable_sleep_mode=True, load_format="dummy")
    prompts, params = [vllm.TokensPrompt(prompt_token_ids=[4, 5])], vllm.SamplingParams(max_tokens=1)
    with pytest.raises(RuntimeError, match="dummy or discarded weights"):
        llm.generate(prompts, params)
    llm.apply_model(lambda model: model.load_weights(iter([("w", torch.ones(2))])))
    assert llm.generate(prompts, params)[0].outputs[0].token_ids == [5]  # cut at max_tokens
    llm.sleep(level=2)
    with pytest.raises(RuntimeError, match="while the weights sleep"):
        llm.apply_model(lambda model: None)
    llm.wake_up(tags=["weights"])
    with pytest.raises(RuntimeError, match="sleeping engine"):  # the KV cache still sleeps
        llm.generate(prompts, params)
    llm.wake_up(tags=["kv_cache"])
    with pytest.raises(RuntimeError, match="dummy or discarded weights"):  # level 2 dropped them
        llm.generate(prompts, params)


@pytest.mark.parametrize("rank, tp_size, seed", [(0, 1, 0), (3, 1, 3), (2, 2, 1), (3, 2, 1), (4, 2, 2)])
def test_each_tp_group_runs_its_own_engine_and_seed(install_vllm, monkeypatch, rank, tp_size, seed):
    install_vllm(no_tokens)
    monkeypatch.setattr(dist, "get_rank", lambda *a: rank)
    config = rollout_config(prompt_length=8, response_length=4, tensor_model_parallel_size=tp_size,
                            gpu_memory_utilization=0.6)
    llm = vllm_rollout.VLLMRollout("/model", config, tokenizer=None).llm
    args = llm.arguments
    assert "data_parallel_size" not in args  # with the external launcher it would join all ranks into one engine
    assert (args["tensor_parallel_size"], args["seed"]) == (tp_size, seed)
    assert args["distributed_executor_backend"] == "external_launcher"
    assert args["disable_custom_all_reduce"] == (tp_size > 1)
    assert args["enforce_eager"] is False  # the schema's default: CUDA graphs on
    assert args["logprobs_mode"] == "processed_logprobs"
    assert (args["gpu_memory_utilization"], args["max_model_len"], args["load_format"]) == (0.6, 12, "dummy")
    assert llm.calls == [Call("sleep", {"level": 2, "mode": "abort"})]  # asleep until the first rollout


def test_generate_pads_tokens_and_their_log_probs(install_vllm, monkeypatch):
    sampled = {(5, 6, 7): [(7, -0.5), (8, -1.25), (2, -0.125), (9, -3.0)], (8,): [(9, -2.0)]}
    install_vllm(lambda ids, params: sampled[tuple(ids)])
    monkeypatch.setattr(dist, "get_rank", lambda *a: 0)
    config = rollout_config(temperature=0.7, top_p=0.9, prompt_length=8, response_length=4)
    rollout = vllm_rollout.VLLMRollout("/model", config, tokenizer=SimpleNamespace(pad_token_id=0))
    prompts = build_prompt_batch([[5, 6, 7], [8]], pad_token_id=0)
    prompts.meta_info = {"stop": ["</search>"], "max_new_tokens": 3}
    with FSDPVLLMShardingManager(torch.nn.Linear(3, 1), rollout) as manager:
        out = manager.postprocess(rollout.generate_sequences(manager.preprocess(prompts)))

    generate = rollout.llm.calls[-1]
    assert generate.name == "generate"
    assert [p["prompt_token_ids"] for p in generate.arguments["prompts"]] == [[5, 6, 7], [8]]  # padding stripped
    params = generate.arguments["sampling_params"]
    assert params.stop == ["</search>"] and params.include_stop_str_in_output
    assert (params.temperature, params.top_p, params.max_tokens, params.logprobs) == (0.7, 0.9, 3, 0)
    assert out.batch["responses"].tolist() == [[7, 8, 2], [9, 0, 0]]  # the engine cut row 0 at max_tokens
    assert response_token_lists(out) == [[7, 8, 2], [9]]
    assert out.batch["rollout_log_probs"].dtype == torch.float32
    assert out.batch["rollout_log_probs"].tolist() == [[-0.5, -1.25, -0.125], [-2.0, 0.0, 0.0]]

    prompts.meta_info = {"do_sample": False}
    with manager:
        rollout.generate_sequences(prompts)
    params = rollout.llm.calls[-1].arguments["sampling_params"]
    assert (params.temperature, params.max_tokens) == (0.0, 4)


def test_manager_loads_only_a_new_version_and_sleeps_only_when_training_starts(install_vllm, monkeypatch):
    install_vllm(no_tokens)
    monkeypatch.setattr(dist, "get_rank", lambda *a: 0)
    rollout = vllm_rollout.VLLMRollout("/model", rollout_config(prompt_length=8, response_length=4), tokenizer=None)
    llm, actor = rollout.llm, torch.nn.Linear(3, 1)
    manager = FSDPVLLMShardingManager(actor, rollout)
    start = len(llm.calls)
    with manager:
        pass
    assert names(llm.calls[start:]) == ["wake_up", "apply_model", "load_weights", "wake_up", "reset_prefix_cache"]
    assert [c.arguments["tags"] for c in llm.calls[start:] if c.name == "wake_up"] == [["weights"], ["kv_cache"]]
    loaded = llm.calls[start + 2].arguments
    assert loaded.keys() == actor.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in actor.state_dict().items())

    start = len(llm.calls)
    with manager:  # the same weights, awake: nothing to do
        pass
    manager.weights_changed()
    with torch.no_grad():
        actor.weight.add_(1.0)
    with manager:  # new weights into the awake engine: no wake-up, and the old prefix cache goes
        pass
    assert names(llm.calls[start:]) == ["apply_model", "load_weights", "reset_prefix_cache"]
    assert torch.equal(llm.calls[start + 1].arguments["weight"], actor.weight)

    start = len(llm.calls)
    manager.rollout_finished()
    manager.rollout_finished()  # already asleep
    assert llm.calls[start:] == [Call("sleep", {"level": 2, "mode": "abort"})]


class ScriptedRetriever:
    def retrieve(self, queries, topk):
        return [[{"id": f"{q}#0", "contents": f'"{q}"\n{q} is a word.', "score": 1.0}] for q in queries]


TURNS = ["<search> fox </search>", "<search> dog </search>", "<answer> fox </answer>"]


def test_worker_loads_weights_once_per_version_across_agent_turns(install_vllm, one_rank, tiny_model_dir,
                                                                  tmp_path):
    from transformers import AutoTokenizer

    from verl.workers.fsdp_workers import ActorRolloutRefWorker

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def respond(prompt_token_ids, params):  # turn k: the context holds k information blocks
        turn = tokenizer.decode(prompt_token_ids).count(INFO_OPEN.strip())
        return [(t, -0.5) for t in tokenizer.encode(TURNS[turn], add_special_tokens=False)]

    def weights() -> dict[str, torch.Tensor]:  # a copy: with one rank the full tensors are the parameters
        return {k: v.clone() for k, v in worker.full_state_dict().items()}

    install_vllm(respond)
    config = schema_node("actor_rollout_ref", {
        "model": {"path": str(tiny_model_dir)},
        "actor": {"ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 2, "optim": {"lr": 1e-2}},
        "rollout": {"name": "vllm", "prompt_length": 512, "response_length": 32},
    })
    worker = ActorRolloutRefWorker(config, role="actor_rollout")
    worker.init_model()
    llm = worker.rollout.llm
    agent = GenerationManager(worker.generate_sequences, tokenizer, ScriptedRetriever(),
                              AgentConfig(max_prompt_length=512, max_start_length=64, max_response_length=32, topk=1))
    prompts = [tokenizer.encode(q, add_special_tokens=False) for q in ("Q1 ", "Q2 ")]

    def rollout() -> list[Call]:
        start = len(llm.calls)
        rows, _ = agent.run(prompts)
        assert [r.turns for r in rows] == [3, 3] and all(r.answered for r in rows)
        return llm.calls[start:]

    one_version = ["wake_up", "apply_model", "load_weights", "wake_up", "reset_prefix_cache"] + ["generate"] * 3
    calls = rollout()
    assert names(calls) == one_version  # three turns, one load
    first = calls[2].arguments
    assert all(torch.equal(first[k], v) for k, v in weights().items())

    batch = assemble_output(build_prompt_batch(prompts, tokenizer.pad_token_id), torch.tensor([[40, 41], [42, 43]]),
                            torch.ones(2, 2, dtype=torch.long))
    batch.batch["info_mask"] = torch.zeros(2, 2, dtype=torch.long)
    batch.batch["advantages"] = torch.ones(2, 2)
    start = len(llm.calls)
    batch.batch["old_log_probs"] = worker.compute_log_prob(batch).batch["old_log_probs"]
    assert llm.calls[start:] == [Call("sleep", {"level": 2, "mode": "abort"})]  # training starts
    worker.save_checkpoint(str(tmp_path / "ckpt"))
    saved = weights()
    worker.update_actor(batch)
    assert len(llm.calls) == start + 1  # asleep already

    calls = rollout()
    assert names(calls) == one_version  # the updated weights, once
    updated = weights()
    assert not all(torch.equal(updated[k], saved[k]) for k in saved)
    assert all(torch.equal(calls[2].arguments[k], v) for k, v in updated.items())
    assert names(rollout()) == ["generate"] * 3  # e.g. validation: the same weights, still awake

    start = len(llm.calls)
    worker.load_checkpoint(str(tmp_path / "ckpt"))
    assert llm.calls[start:] == [Call("sleep", {"level": 2, "mode": "abort"})]
    calls = rollout()
    assert names(calls) == one_version
    assert all(torch.equal(calls[2].arguments[k], v) for k, v in saved.items())
