from types import SimpleNamespace

import numpy as np
import torch

from verl.protocol import DataProto
from verl.trainer.config import schema_node
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.ray_trainer import RayPPOTrainer


def batch_with_retrieved_tokens() -> DataProto:
    # response: [gen, gen, info, info, gen]; reward 1 on the last token; values 0.1 .. 0.5
    data = DataProto.from_dict(
        tensors={"token_level_rewards": torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]]),
                 "values": torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]]),
                 "response_mask": torch.ones(1, 5, dtype=torch.long),
                 "info_mask": torch.tensor([[0, 0, 1, 1, 0]])},
        non_tensors={"uid": np.array(["p0"], dtype=object)})
    return data


def advantages_of(data: DataProto, critic_state_masking: bool, estimator: str = "gae",
                  negative_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    config = schema_node("", {"algorithm": {"adv_estimator": estimator, "gamma": 1.0, "lam": 1.0,
                                            "norm_adv_by_std_in_grpo": True,
                                            "negative_advantage_scale": negative_scale},
                              "critic": {"state_masking": critic_state_masking}})
    RayPPOTrainer.compute_advantages(SimpleNamespace(config=config), data)
    return data.batch["advantages"], data.batch["returns"]


def test_gae_skips_retrieved_tokens_when_the_critic_masks_them():
    _, returns = advantages_of(batch_with_retrieved_tokens(), True)
    # gamma = lam = 1: every generated token's return is the final reward, 1; retrieved tokens get 0
    assert torch.allclose(returns, torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]]), atol=1e-6)
    # equal to GAE over the row with the retrieved tokens cut out
    cut_adv, cut_ret = core_algos.compute_gae_advantage_return(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.1, 0.2, 0.5]]), torch.ones(1, 3), 1.0, 1.0)
    assert torch.allclose(returns[:, [0, 1, 4]], cut_ret)


def test_without_the_option_gae_walks_every_response_token():
    _, returns = advantages_of(batch_with_retrieved_tokens(), False)
    assert torch.allclose(returns, torch.ones(1, 5), atol=1e-6)


def group_with_one_success() -> DataProto:
    # one prompt, four samples of two tokens; only the first is rewarded
    return DataProto.from_dict(
        tensors={"token_level_rewards": torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
                 "response_mask": torch.ones(4, 2, dtype=torch.long)},
        non_tensors={"uid": np.array(["p0"] * 4, dtype=object)})


def test_negative_advantage_scale_shrinks_only_the_below_average_samples():
    # scores 1, 0, 0, 0: mean .25, unbiased std .5, so GRPO gives 1.5 and -0.5 on every token
    full, _ = advantages_of(group_with_one_success(), False, "grpo")
    assert torch.allclose(full, torch.tensor([[1.5, 1.5]] + [[-0.5, -0.5]] * 3), atol=1e-5)
    half, half_returns = advantages_of(group_with_one_success(), False, "grpo", negative_scale=0.5)
    assert torch.allclose(half, torch.tensor([[1.5, 1.5]] + [[-0.25, -0.25]] * 3), atol=1e-5)
    positive_only, _ = advantages_of(group_with_one_success(), False, "grpo", negative_scale=0.0)
    assert torch.allclose(positive_only, torch.tensor([[1.5, 1.5]] + [[0.0, 0.0]] * 3), atol=1e-5)
    # GRPO's returns are its advantages as estimated; the scale shapes the policy's step only
    assert torch.allclose(half_returns, full, atol=1e-5)
