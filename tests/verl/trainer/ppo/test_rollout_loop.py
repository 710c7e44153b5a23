from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl.protocol import DataProto
from verl.trainer.config import schema_node
from verl.trainer.ppo.rollout_loop import RolloutLoop, SingleTurnLoop, load_rollout_loop
from verl.workers.rollout.base import assemble_output, build_prompt_batch


def config(loop="verl.trainer.ppo.rollout_loop:SingleTurnLoop"):
    return schema_node("", {
        "data": {"max_response_length": 3},
        "actor_rollout_ref": {"rollout": {"loop": loop, "do_sample": True, "temperature": 0.7, "top_p": 0.9,
                                          "top_k": 5, "val_kwargs": {"do_sample": False, "temperature": 0.0}}}})


class EchoGenerate:
    """Stands in for the worker group: answers every prompt with the tokens 7, 8, then pad, sampled
    with log-probs -0.5 and -0.25."""

    def __init__(self):
        self.requests = []

    def __call__(self, prompts: DataProto) -> DataProto:
        self.requests.append(prompts)
        n = len(prompts)
        responses = torch.tensor([[7, 8, 0]] * n)
        output = assemble_output(prompts, responses, (responses != 0).long())
        output.batch["rollout_log_probs"] = torch.tensor([[-0.5, -0.25, 0.0]] * n)
        return output


def test_single_turn_keeps_non_tensors_and_adds_a_zero_info_mask():
    generate = EchoGenerate()
    prompts = build_prompt_batch([[1, 2, 3], [4]], pad_token_id=0)
    prompts.non_tensor_batch["uid"] = np.array(["a", "b"], dtype=object)
    loop = load_rollout_loop(config(), tokenizer=None, generate=generate)
    out = loop.run(prompts)
    assert isinstance(loop, SingleTurnLoop)
    assert list(out.non_tensor_batch["uid"]) == ["a", "b"]
    assert out.batch["info_mask"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert out.batch["input_ids"].tolist() == [[1, 2, 3, 7, 8, 0], [0, 0, 4, 7, 8, 0]]
    assert out.batch["rollout_log_probs"].tolist() == [[-0.5, -0.25, 0.0]] * 2  # the engine's, passed on
    assert out.meta_info == {"metrics": {}}
    assert generate.requests[0].meta_info == {"do_sample": True, "max_new_tokens": 3, "temperature": 0.7, "top_p": 0.9,
                                              "top_k": 5}
    loop.run(prompts, validate=True)
    assert generate.requests[1].meta_info == {"do_sample": False, "max_new_tokens": 3}


def test_sampled_validation_uses_every_val_kwargs_setting():
    sampled = OmegaConf.merge(config(), {"actor_rollout_ref": {"rollout": {"val_kwargs": {
        "do_sample": True, "temperature": 0.5, "top_p": 0.8, "top_k": 2}}}})
    loop = load_rollout_loop(sampled, tokenizer=None, generate=EchoGenerate())
    assert loop.sampling_meta(validate=True) == {"do_sample": True, "max_new_tokens": 3, "temperature": 0.5,
                                                 "top_p": 0.8, "top_k": 2}


def test_loop_must_name_a_rollout_loop_class():
    with pytest.raises(TypeError, match="not a RolloutLoop"):
        load_rollout_loop(config("verl.protocol:DataProto"), None, EchoGenerate())
    assert issubclass(SingleTurnLoop, RolloutLoop)
