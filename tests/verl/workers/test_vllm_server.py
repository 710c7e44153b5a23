"""VLLMServer against a stand-in `vllm` built from the pinned release's API (tests/fake_vllm.py, from
tests/fixtures/vllm_api.json; no GPU here).

Checked: AsyncLLM is started with AsyncEngineArgs the pinned release takes (VLLMRollout's engine
arguments); requests become SamplingParams and TokensPrompts it takes, and its outputs become token
ids, log-probs and finish reasons; weights go in through the IPC weight transfer, once per update,
with the engine's sleep and wake-ups in the right order, also behind ServerHost.
"""
from __future__ import annotations

import asyncio
import sys

import pytest
import torch

from fake_vllm import FAKE_GPU_UUID, Call, fake_vllm_modules
from verl.trainer.config import rollout_config
from verl.workers.rollout import vllm_server
from verl.workers.rollout.server import SamplingSettings, ServerHost

CONFIG = rollout_config(prompt_length=8, response_length=4, gpu_memory_utilization=0.6, max_num_seqs=32)
SAMPLED = {(5, 6, 7): [(7, -0.5), (8, -1.25), (2, -0.125), (9, -3.0)], (8,): [(9, -2.0)]}


@pytest.fixture
def install_vllm(monkeypatch):
    """install_vllm(respond): the stand-in vllm in sys.modules, this process taken for a GPU worker
    whose GPU is the one the fake engine runs on."""
    monkeypatch.setattr(vllm_server, "device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(vllm_server, "gpu_uuid", lambda: FAKE_GPU_UUID)

    def install(respond=lambda ids, params: SAMPLED[tuple(ids)]):
        for name, module in fake_vllm_modules(respond).items():
            monkeypatch.setitem(sys.modules, name, module)
        return sys.modules["vllm"]

    return install


def names(calls: list[Call]) -> list[str]:
    return [call.name for call in calls]


def test_fake_async_llm_refuses_what_the_pinned_release_does_not_take():
    modules = fake_vllm_modules(lambda ids, params: [])
    AsyncLLM = modules["vllm.v1.engine.async_llm"].AsyncLLM
    AsyncEngineArgs = modules["vllm"].AsyncEngineArgs
    base = modules["vllm.distributed.weight_transfer.base"]
    with pytest.raises(TypeError, match="enforce_eagre"):
        AsyncEngineArgs(model="m", enforce_eagre=True)
    with pytest.raises(TypeError, match="backnd"):
        AsyncLLM.from_engine_args(AsyncEngineArgs(model="m", weight_transfer_config={"backnd": "ipc"}))
    with pytest.raises(TypeError, match="needs AsyncEngineArgs"):
        AsyncLLM.from_engine_args(modules["vllm"].SamplingParams())
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model="m", weight_transfer_config={"backend": "ipc"}))
    with pytest.raises(TypeError, match="AsyncLLM.generate.*sesion_id"):
        engine.generate({"prompt_token_ids": [1]}, None, "r", sesion_id="s")  # refused at the call, as a generator
    with pytest.raises(AttributeError):
        engine.apply_model  # an LLM method; AsyncLLM loads weights through the weight transfer

    async def transfer():
        with pytest.raises(RuntimeError, match="start_weight_update must be called"):
            await engine.update_weights(base.WeightTransferUpdateRequest(update_info={"names": [], "dtype_names": [],
                                                                                      "shapes": []}))
        with pytest.raises(ValueError, match="pakced"):
            await engine.init_weight_transfer_engine(base.WeightTransferInitRequest(init_info={"pakced": False}))
        await engine.start_weight_update()
        with pytest.raises(ValueError, match="missing a required argument: 'shapes'"):
            await engine.update_weights(base.WeightTransferUpdateRequest(update_info={"names": [], "dtype_names": []}))

    asyncio.run(transfer())
    unconfigured = AsyncLLM.from_engine_args(AsyncEngineArgs(model="m"))
    with pytest.raises(RuntimeError, match="weight_transfer_config"):
        asyncio.run(unconfigured.start_weight_update())


def test_engine_starts_with_vllm_rollout_s_arguments(install_vllm):
    install_vllm()
    engine = vllm_server.VLLMServer("/model", CONFIG, seed=3).engine
    args = engine.arguments
    assert args["data_parallel_size"] == 1  # the release's default: one engine per rank, none spanning ranks
    assert (args["model"], args["tokenizer"], args["seed"], args["max_num_seqs"]) == ("/model", "/model", 3, 32)
    assert (args["enforce_eager"], args["enable_prefix_caching"], args["enable_sleep_mode"]) == (False, True, True)
    assert (args["gpu_memory_utilization"], args["max_model_len"], args["load_format"]) == (0.6, 12, "dummy")
    assert args["logprobs_mode"] == "processed_logprobs"
    assert engine.transfer.backend == "ipc"
    assert engine.calls == []

    with pytest.raises(ValueError, match="tensor_model_parallel_size=1"):
        vllm_server.VLLMServer("/model", rollout_config(tensor_model_parallel_size=2), seed=0)


def test_generate_maps_settings_outputs_and_log_probs(install_vllm):
    install_vllm()
    server = vllm_server.VLLMServer("/model", CONFIG, seed=0)

    async def run():
        await server.update_weights([("w", torch.ones(2))])
        sampled = SamplingSettings.from_config(CONFIG, max_new_tokens=3, temperature=0.7, top_p=0.9, top_k=20,
                                               stop=["</search>"], seed=11)
        return (await server.generate("traj-1", [5, 6, 7], sampled),
                await server.generate("traj-2", [8], SamplingSettings.from_config(CONFIG, do_sample=False)))

    cut, short = asyncio.run(run())
    assert (cut.token_ids, cut.log_probs, cut.finish_reason) == ([7, 8, 2], [-0.5, -1.25, -0.125], "length")
    assert (short.token_ids, short.log_probs, short.finish_reason) == ([9], [-2.0], "stop")
    first, second = [c for c in server.engine.calls if c.name == "generate"]
    assert first.arguments["prompt"] == {"prompt_token_ids": [5, 6, 7]} and first.arguments["request_id"] == "traj-1"
    params = first.arguments["sampling_params"]
    assert (params.temperature, params.top_p, params.top_k, params.seed, params.max_tokens) == (0.7, 0.9, 20, 11, 3)
    assert params.stop == ["</search>"] and params.include_stop_str_in_output and params.logprobs == 0
    params = second.arguments["sampling_params"]
    assert (params.temperature, params.top_k, params.max_tokens) == (0.0, -1, 4)  # greedy; the config's length


def test_weights_load_once_per_update_with_sleep_and_wake_ups_in_order(install_vllm):
    install_vllm()
    server = vllm_server.VLLMServer("/model", CONFIG, seed=0)
    engine = server.engine
    weights = {"a": torch.randn(3, 2), "b": torch.arange(4.0)}
    greedy = SamplingSettings.from_config(CONFIG, do_sample=False)

    async def run():
        assert not server.holds_weights  # dummy weights
        await server.update_weights(weights.items())
        first = list(engine.calls)
        await server.generate("t", [8], greedy)
        await server.release()
        assert not server.holds_weights  # level 2 discards them
        with pytest.raises(RuntimeError, match="sleeping engine"):
            await server.generate("t", [8], greedy)
        with pytest.raises(RuntimeError, match="update_weights brings it back"):
            await server.resume()
        start = len(engine.calls)
        await server.update_weights(weights.items())
        await server.generate("t", [8], greedy)
        return first, engine.calls[start:]

    first, again = asyncio.run(run())
    assert names(first) == ["init_weight_transfer_engine", "start_weight_update", "update_weights", "load_weights",
                            "finish_weight_update", "reset_prefix_cache"]
    loaded = first[3].arguments  # in the engine's dtype (the rollout's bfloat16)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], v.to(torch.bfloat16)) for k, v in weights.items())
    assert names(again) == ["wake_up", "start_weight_update", "update_weights", "load_weights",
                            "finish_weight_update", "wake_up", "reset_prefix_cache", "generate"]
    assert [c.arguments["tags"] for c in again if c.name == "wake_up"] == [["weights"], ["kv_cache"]]
    assert Call("sleep", {"level": 2, "mode": "abort"}) in engine.calls


def test_host_loads_each_version_once_across_turns(install_vllm):
    install_vllm()
    actor = {"w": torch.zeros(2)}
    host = ServerHost(vllm_server.VLLMServer("/model", CONFIG, seed=0), lambda: actor.items(), load_on_generate=True)
    engine = host.server.engine
    greedy = SamplingSettings.from_config(CONFIG, do_sample=False)
    host.release()  # the worker's training passes start first

    def turns() -> list[str]:
        start = len(engine.calls)
        for _ in range(3):
            assert host.generate("t", [5, 6, 7], greedy).token_ids == [7, 8, 2, 9]
        return names(engine.calls[start:])

    load = ["wake_up", "start_weight_update", "update_weights", "load_weights", "finish_weight_update", "wake_up",
            "reset_prefix_cache"]
    assert turns() == ["init_weight_transfer_engine"] + load + ["generate"] * 3
    assert turns() == ["generate"] * 3  # same weights, still awake
    actor["w"] = torch.ones(2)
    host.weights_changed()
    host.release()
    assert turns() == load + ["generate"] * 3
    last_load = [c for c in engine.calls if c.name == "load_weights"][-1]
    assert torch.equal(last_load.arguments["w"], torch.ones(2, dtype=torch.bfloat16))
    host.close()


def test_worker_server_gets_each_version_of_the_weights_once(install_vllm, one_rank, tiny_model_dir):
    from verl.trainer.config import schema_node
    from verl.workers.fsdp_workers import ActorRolloutRefWorker
    from verl.workers.rollout.base import assemble_output, build_prompt_batch

    install_vllm(lambda ids, params: [(7, -0.5), (8, -0.25)])
    config = schema_node("actor_rollout_ref", {
        "model": {"path": str(tiny_model_dir)},
        "actor": {"ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 2, "optim": {"lr": 1e-2}},
        "rollout": {"name": "vllm", "mode": "async", "prompt_length": 16, "response_length": 4},
    })
    worker = ActorRolloutRefWorker(config, role="actor_rollout")
    worker.init_model()
    engine = worker.server_host.server.engine
    assert names(engine.calls) == ["sleep"]  # asleep until the first rollout: training may come first
    greedy = SamplingSettings.from_config(config.rollout, do_sample=False)

    def turns() -> list[Call]:
        start = len(engine.calls)
        for turn in range(3):
            assert worker.server_generate("t", [5, 6, 7][:turn + 1], greedy).token_ids == [7, 8]
        return engine.calls[start:]

    load = ["wake_up", "start_weight_update", "update_weights", "load_weights", "finish_weight_update", "wake_up",
            "reset_prefix_cache"]
    calls = turns()
    assert names(calls) == ["init_weight_transfer_engine"] + load + ["generate"] * 3
    actor = {k: v.to(torch.bfloat16) for k, v in worker.full_state_dict().items()}
    assert all(torch.equal(calls[4].arguments[k], v) for k, v in actor.items())

    prompts = build_prompt_batch([[5, 6, 7], [8]], pad_token_id=0)
    batch = assemble_output(prompts, torch.tensor([[40, 41], [42, 43]]), torch.ones(2, 2, dtype=torch.long))
    batch.batch["info_mask"] = torch.zeros(2, 2, dtype=torch.long)
    batch.batch["advantages"] = torch.ones(2, 2)
    batch.batch["old_log_probs"] = worker.compute_log_prob(batch).batch["old_log_probs"]
    assert engine.calls[-1] == Call("sleep", {"level": 2, "mode": "abort"})  # training starts
    worker.update_actor(batch)
    start = len(engine.calls)
    worker.wake_server()  # what the driver calls on every rank of a larger group
    calls = engine.calls[start:]
    assert names(calls) == load and names(turns()) == ["generate"] * 3  # the updated weights, once
    updated = {k: v.to(torch.bfloat16) for k, v in worker.full_state_dict().items()}
    assert any(not torch.equal(updated[k], actor[k]) for k in actor)
    assert all(torch.equal(calls[3].arguments[k], v) for k, v in updated.items())


def test_host_of_several_ranks_loads_only_when_all_ranks_wake_it(install_vllm):
    install_vllm()
    host = ServerHost(vllm_server.VLLMServer("/model", CONFIG, seed=0), lambda: {"w": torch.ones(2)}.items(),
                      load_on_generate=False)
    greedy = SamplingSettings.from_config(CONFIG, do_sample=False)
    with pytest.raises(RuntimeError, match="stale"):  # a lone rank's collective gather would hang
        host.generate("t", [8], greedy)
    host.ready()
    host.ready()  # loaded already
    assert host.generate("t", [8], greedy).token_ids == [9]
    assert names(host.server.engine.calls).count("load_weights") == 1
    host.close()
