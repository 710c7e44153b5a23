from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from verl.protocol import DataProto
from verl.trainer.ppo.reward import RewardManager, load_reward_function, reward_metrics


def echo_score(data_source, solution_str, ground_truth, extra_info=None):
    """Dict result: the score is 1 when the ground truth is in the response; extras are logged."""
    hit = float(ground_truth in solution_str)
    if data_source == "plain":
        return hit
    return {"score": hit, "length": float(len(solution_str))}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def rollout_batch(tokenizer, prompts, responses, sources, truths):
    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    width = max(len(ids(r)) for r in responses) + 2
    resp = torch.full((len(responses), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(responses), width), dtype=torch.long)
    for row, text in enumerate(responses):
        tokens = ids(text)
        resp[row, :len(tokens)] = torch.tensor(tokens)
        mask[row, :len(tokens)] = 1
    prompt_ids = torch.tensor([ids(p)[:3] for p in prompts])
    return DataProto.from_dict(
        {"prompts": prompt_ids, "responses": resp, "response_mask": mask},
        {"data_source": sources, "reward_model": [{"ground_truth": t} for t in truths]})


def test_score_sits_on_the_last_response_token_and_prompt_is_not_decoded(tokenizer):
    # The prompt contains "Paris" too: a manager decoding prompt + response would score row 1 as 1.
    data = rollout_batch(tokenizer, ["Paris Paris", "Paris Paris"], ["Paris is it", "no idea"],
                         ["nq", "nq"], ["Paris", "Paris"])
    scores, extras = RewardManager(tokenizer, echo_score)(data)
    lengths = data.batch["response_mask"].sum(-1)
    assert scores[0, lengths[0] - 1] == 1.0 and scores[0].sum() == 1.0
    assert scores[1].sum() == 0.0
    assert extras["length"] == [len("Paris is it"), len("no idea")]


def test_dict_extras_are_logged_as_means_and_missing_rows_are_nan(tokenizer):
    data = rollout_batch(tokenizer, ["a b c", "a b c"], ["Paris", "Rome"], ["nq", "plain"], ["Paris", "Paris"])
    scores, extras = RewardManager(tokenizer, echo_score)(data)
    assert scores.sum(-1).tolist() == [1.0, 0.0]
    assert extras["length"][0] == 5.0 and math.isnan(extras["length"][1])
    assert reward_metrics(extras) == {"reward/length": 5.0}


def test_load_by_module_path_and_by_file(tmp_path):
    fn = load_reward_function("verl.trainer.ppo.reward:_get")
    assert fn.__name__ == "_get"
    path = tmp_path / "my_reward.py"
    path.write_text("def judge(data_source, solution_str, ground_truth, extra_info=None):\n    return 0.5\n")
    assert load_reward_function(str(path), "judge")("nq", "x", "y") == 0.5
    with pytest.raises(AttributeError, match="compute_score"):
        load_reward_function(str(path))
    with pytest.raises(ValueError, match="custom_reward_function.path"):
        load_reward_function(None)
    with pytest.raises(ModuleNotFoundError):
        load_reward_function("no_such_module_xyz:f")


def test_reward_kwargs_reach_every_call(tmp_path):
    path = tmp_path / "shaped.py"
    path.write_text("def judge(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):\n"
                    "    return 0.5 + bonus\n")
    assert load_reward_function(str(path), "judge", {"bonus": 0.25})("nq", "x", "y") == 0.75
    assert load_reward_function(str(path), "judge", {})("nq", "x", "y") == 0.5
