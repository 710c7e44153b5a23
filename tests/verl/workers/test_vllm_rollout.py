"""VLLMRollout and the weight-sync manager against a stand-in `vllm` module (no GPU here).

What is checked is our side of the contract: the requests and sampling parameters we build, how
outputs become padded batches, and that every rollout is preceded by loading the actor's current
weights into the engine and followed by freeing it.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

from verl.trainer.config import rollout_config
from verl.workers.rollout.base import build_prompt_batch, response_token_lists


class FakeLLM:
    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.model = kwargs, [], torch.nn.Linear(2, 2)
        self.model.load_weights = lambda weights: self.calls.append(("load", dict(weights)))

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags)))

    def apply_model(self, func):
        return [func(self.model)]

    def generate(self, requests, params, use_tqdm):
        self.calls.append(("generate", [r["prompt_token_ids"] for r in requests], params))
        outputs = [[7, 8, 2], [9]]  # the engine's token ids, eos (2) included
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=t)]) for t in outputs]


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM
    vllm.SamplingParams = lambda **kw: kw
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 4)


def test_generate_builds_requests_and_pads(fake_vllm):
    from verl.workers.rollout.vllm_rollout import VLLMRollout
    from verl.workers.sharding_manager import FSDPVLLMShardingManager

    config = rollout_config(temperature=0.7, top_p=0.9, prompt_length=8, response_length=4,
                            tensor_model_parallel_size=2, gpu_memory_utilization=0.6)
    tokenizer = types.SimpleNamespace(pad_token_id=0)
    rollout = VLLMRollout("/model", config, tokenizer)
    llm = rollout.llm
    assert llm.kwargs["tensor_parallel_size"] == 2 and llm.kwargs["data_parallel_size"] == 2
    assert llm.kwargs["gpu_memory_utilization"] == 0.6 and llm.kwargs["max_model_len"] == 12
    assert llm.calls == [("sleep", 2)]  # dummy weights, asleep until the first rollout

    actor = torch.nn.Linear(3, 1)
    prompts = build_prompt_batch([[5, 6, 7], [8]], pad_token_id=0)
    prompts.meta_info = {"stop": ["</search>"], "max_new_tokens": 3}
    with FSDPVLLMShardingManager(actor, rollout) as manager:
        out = manager.postprocess(rollout.generate_sequences(manager.preprocess(prompts)))
    kinds = [c[0] for c in llm.calls[1:]]
    assert kinds == ["wake_up", "load", "wake_up", "generate", "sleep"]
    loaded = llm.calls[2][1]
    assert loaded.keys() == actor.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in actor.state_dict().items())
    _, requests, params = llm.calls[4]
    assert requests == [[5, 6, 7], [8]]  # left padding stripped
    assert params["stop"] == ["</search>"] and params["include_stop_str_in_output"]
    assert (params["temperature"], params["top_p"], params["max_tokens"]) == (0.7, 0.9, 3)
    assert out.batch["responses"].tolist() == [[7, 8, 2], [9, 0, 0]]
    assert response_token_lists(out) == [[7, 8, 2], [9]]

    prompts.meta_info = {"do_sample": False}
    rollout.generate_sequences(prompts)
    assert llm.calls[-1][2]["temperature"] == 0.0 and llm.calls[-1][2]["max_tokens"] == 4
