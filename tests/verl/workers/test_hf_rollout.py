"""HFRollout against bare `model.generate`, stop-string cutting and padding on the tiny model."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl.trainer.config import rollout_config
from verl.workers.rollout.base import build_prompt_batch, response_token_lists
from verl.workers.rollout.hf_rollout import HFRollout


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def model_on_device(request, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().to(request.param)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _prompts(tokenizer):
    texts = ["Who was born first?", "<search> capital of France </search> Paris", "The"]
    return [tokenizer.encode(t) for t in texts]


def test_greedy_equals_bare_generate(model_on_device):
    """On the model's own device (fp32 on both): the rollout's batching, padding and cutting add nothing."""
    model, tok = model_on_device
    prompts = build_prompt_batch(_prompts(tok), tok.pad_token_id)
    prompts.meta_info = {"do_sample": False, "max_new_tokens": 12}
    rollout = HFRollout(model, tok, rollout_config(response_length=12, micro_batch_size=2))
    out = rollout.generate_sequences(prompts)

    P = prompts.batch["input_ids"].shape[1]
    assert out.batch["responses"].shape == (3, 12)
    assert out.batch["input_ids"].shape == (3, P + 12)
    assert torch.equal(out.batch["prompts"], prompts.batch["input_ids"])
    for i, tokens in enumerate(_prompts(tok)):
        # one row at a time, no padding at all: the reference continuation
        ref = model.generate(torch.tensor([tokens], device=model.device), max_new_tokens=12, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        ref = ref[0, len(tokens):].tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id) + 1]
        assert response_token_lists(out)[i] == ref
        n = len(ref)
        assert out.batch["response_mask"][i].tolist() == [1] * n + [0] * (12 - n)
        assert (out.batch["responses"][i, n:] == tok.pad_token_id).all()
    # positions continue after the prompt's last position
    pos = out.batch["position_ids"]
    assert torch.equal(pos[:, P:] - pos[:, P - 1:P], torch.arange(1, 13).expand(3, 12))
    assert torch.equal(out.batch["attention_mask"][:, P:], out.batch["response_mask"])


def test_stop_string_cuts_right_after_first_occurrence(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = build_prompt_batch(_prompts(tok), tok.pad_token_id)
    prompts.meta_info = {"do_sample": False, "max_new_tokens": 16}
    rollout = HFRollout(model, tok, rollout_config(response_length=16))
    free = response_token_lists(rollout.generate_sequences(prompts))
    # choose, per the random model's own greedy text, a stop string that occurs mid-response
    text0 = tok.decode(free[0])
    stop = text0[len(text0) // 2: len(text0) // 2 + 2]
    assert stop.strip(), f"degenerate stop string from {text0!r}"
    prompts.meta_info["stop"] = [stop]
    cut = response_token_lists(rollout.generate_sequences(prompts))
    for full, short in zip(free, cut):
        assert full[: len(short)] == short  # same greedy path, only shorter
        text = tok.decode(short)
        if stop in tok.decode(full):
            assert stop in text and stop not in tok.decode(short[:-1])
        else:
            assert short == full
    assert len(cut[0]) < len(free[0])


def test_sampling_is_seeded_and_differs_from_greedy(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = build_prompt_batch(_prompts(tok), tok.pad_token_id)
    rollout = HFRollout(model, tok, rollout_config(response_length=8))
    prompts.meta_info = {"do_sample": True, "max_new_tokens": 8}
    torch.manual_seed(1)
    a = rollout.generate_sequences(prompts).batch["responses"]
    torch.manual_seed(1)
    b = rollout.generate_sequences(prompts).batch["responses"]
    prompts.meta_info["do_sample"] = False
    g = rollout.generate_sequences(prompts).batch["responses"]
    assert torch.equal(a, b)
    assert not torch.equal(a, g)


def test_temperature_zero_means_greedy(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = build_prompt_batch(_prompts(tok), tok.pad_token_id)
    rollout = HFRollout(model, tok, rollout_config(response_length=6))
    prompts.meta_info = {"do_sample": True, "temperature": 0.0}
    sampled_at_zero = rollout.generate_sequences(prompts).batch["responses"]
    prompts.meta_info = {"do_sample": False}
    assert torch.equal(sampled_at_zero, rollout.generate_sequences(prompts).batch["responses"])
