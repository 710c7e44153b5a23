"""HFRollout's `rollout_log_probs`: the log-prob of each sampled token under log_softmax(logits /
temperature) of the whole vocabulary, as a full forward over the finished sequences gives it."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl.protocol import DataProto
from verl.trainer.config import rollout_config
from verl.workers.rollout.base import build_prompt_batch, concat_rollouts
from verl.workers.rollout.hf_rollout import HFRollout

WIDTH = 10


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(), \
        AutoTokenizer.from_pretrained(tiny_model_dir)


def forward_log_probs(model, out: DataProto, temperature: float) -> torch.Tensor:
    """[B, R] log-probs of the responses from one forward over prompt + response, 0 on padding."""
    with torch.no_grad():
        logits = model(input_ids=out.batch["input_ids"], attention_mask=out.batch["attention_mask"],
                       position_ids=out.batch["position_ids"]).logits[:, -WIDTH - 1:-1]
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    picked = log_probs.gather(-1, out.batch["responses"].unsqueeze(-1)).squeeze(-1)
    return picked * out.batch["response_mask"]


def generate(model, tok, meta: dict, caching: bool = True) -> DataProto:
    texts = ["Who was born first?", "<search> capital of France </search> Paris", "The", "Which city"]
    prompts = build_prompt_batch([tok.encode(t) for t in texts], tok.pad_token_id)
    prompts.meta_info = {"max_new_tokens": WIDTH, **meta}
    rollout = HFRollout(model, tok, rollout_config(response_length=WIDTH, micro_batch_size=3,
                                                   enable_prefix_caching=caching))
    return rollout.generate_sequences(prompts)


def test_sampled_log_probs_are_the_untruncated_tempered_distributions(model_and_tok):
    model, tok = model_and_tok
    torch.manual_seed(0)
    # top-k 5 and top-p 0.9 decide what is sampled; the recorded log-probs are of the whole vocabulary
    out = generate(model, tok, {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9,
                                "stop": [" ", "e", "a", "o", "t"]})
    recorded = out.batch["rollout_log_probs"]
    assert recorded.dtype == torch.float32 and recorded.shape == (4, WIDTH)
    assert (out.batch["response_mask"].sum(-1) < WIDTH).any()  # rows cut by the stop string or eos
    assert torch.all(recorded[out.batch["response_mask"] == 0] == 0)
    torch.testing.assert_close(recorded, forward_log_probs(model, out, 0.7), atol=1e-5, rtol=0)


def test_greedy_log_probs_are_of_the_unscaled_distribution(model_and_tok):
    model, tok = model_and_tok
    out = generate(model, tok, {"do_sample": False, "temperature": 0.7}, caching=False)
    torch.testing.assert_close(out.batch["rollout_log_probs"], forward_log_probs(model, out, 1.0), atol=1e-5, rtol=0)


def test_concat_rollouts_pads_the_log_probs_with_zeros():
    def batch(width: int, value: float) -> DataProto:
        return DataProto.from_dict({"prompts": torch.ones(1, 2, dtype=torch.long),
                                    "responses": torch.ones(1, width, dtype=torch.long),
                                    "rollout_log_probs": torch.full((1, width), value)})

    merged = concat_rollouts([batch(1, -0.5), batch(3, -2.0)], pad_token_id=0)
    assert merged.batch["rollout_log_probs"].tolist() == [[-0.5, 0.0, 0.0], [-2.0, -2.0, -2.0]]
