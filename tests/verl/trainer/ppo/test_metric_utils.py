import pytest
import torch

from verl.protocol import DataProto
from verl.trainer.ppo.metric_utils import compute_data_metrics, compute_throughput_metrics, compute_timing_metrics


def make_batch() -> DataProto:
    # P = 3, R = 4. Row 0: prompt 2 tokens, response 4 (hits R); row 1: prompt 3 (hits P), response 2.
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    response_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    return DataProto.from_dict(
        {
            "responses": torch.zeros(2, 4, dtype=torch.long),
            "attention_mask": torch.cat([prompt_mask, response_mask], dim=1),
            "response_mask": response_mask,
            "token_level_scores": torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 0.0, 0.0]]),
            "token_level_rewards": torch.tensor([[0.0, 0.0, -0.1, 1.0], [0.0, 0.5, 0.0, 0.0]]),
            "advantages": torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, 99.0, 99.0]]),
            "returns": torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 50.0, 50.0]]),
            "values": torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 1.5, -7.0, -7.0]]),
        }
    )


def test_compute_data_metrics_hand_values():
    m = compute_data_metrics(make_batch(), use_critic=True)
    expected = {
        # sequence sums: scores 1, 0.5; rewards 0.9, 0.5
        "critic/score/mean": 0.75, "critic/score/max": 1.0, "critic/score/min": 0.5,
        "critic/rewards/mean": 0.7, "critic/rewards/max": 0.9, "critic/rewards/min": 0.5,
        # valid tokens only (the 99s and 50s are padding): 1, 2, 3, 4, -1, -2
        "critic/advantages/mean": 7 / 6, "critic/advantages/max": 4.0, "critic/advantages/min": -2.0,
        "critic/returns/mean": 8 / 6, "critic/returns/max": 2.0, "critic/returns/min": 1.0,
        "critic/values/mean": 7.5 / 6, "critic/values/max": 2.0, "critic/values/min": 1.0,
        # R - V = [0, 0, 0, 0, 0, 0.5]: unbiased var 1/24; Var(R) = 4/15 -> 1 - (1/24) / (4/15 + 1e-5)
        "critic/vf_explained_var": 1 - (1 / 24) / (4 / 15 + 1e-5),
        "response_length/mean": 3.0, "response_length/max": 4.0, "response_length/min": 2.0,
        "response_length/clip_ratio": 0.5,
        "prompt_length/mean": 2.5, "prompt_length/max": 3.0, "prompt_length/min": 2.0,
        "prompt_length/clip_ratio": 0.5,
    }  # fmt: skip
    assert m.keys() == expected.keys()
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-6), key


def test_compute_data_metrics_without_critic_has_no_value_keys():
    batch = make_batch()
    batch.pop(batch_keys=["values"])
    m = compute_data_metrics(batch, use_critic=False)
    assert not any(k.startswith("critic/values") or k == "critic/vf_explained_var" for k in m)


def test_timing_and_throughput_metrics():
    batch = make_batch()  # 6 response tokens, 5 prompt tokens
    timing = {"gen": 0.6, "update_actor": 1.2, "step": 3.0}
    m = compute_timing_metrics(batch, timing)
    assert m["timing_s/gen"] == 0.6 and m["timing_s/step"] == 3.0
    assert m["timing_per_token_ms/gen"] == pytest.approx(100.0)  # 600 ms / 6 generated tokens
    assert m["timing_per_token_ms/update_actor"] == pytest.approx(1200 / 11)  # over all 11 tokens
    t = compute_throughput_metrics(batch, timing, n_devices=2)
    assert t == pytest.approx({"perf/total_num_tokens": 11.0, "perf/time_per_step": 3.0, "perf/throughput": 11 / 6})
