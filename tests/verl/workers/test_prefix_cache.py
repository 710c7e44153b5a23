"""Prefix caching in the HF rollout: a multi-turn context continues from the previous call's keys
and values, and greedy outputs are token-identical to re-encoding the whole context."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl.trainer.config import rollout_config
from verl.workers.rollout.base import build_prompt_batch, response_token_lists
from verl.workers.rollout.hf_rollout import HFRollout
from verl.workers.rollout.prefix_cache import CachedBatch, concat_batches, match_rows


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


class CountingModel(torch.nn.Module):
    """Counts the positions the wrapped model runs its forward on (prefill and decode)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.tokens = model, 0
        self.config, self.generation_config = model.config, model.generation_config
        self.hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        self.tokens += kwargs["input_ids"].numel()

    def generate(self, **kwargs):
        return self.model.generate(**kwargs)


def stop_string(model, tok) -> str:
    """A string the random model writes early in row 0, so that rows stop at different steps."""
    batch = build_prompt_batch([tok.encode("Who was born first?")], tok.pad_token_id)
    batch.meta_info = {"do_sample": False, "max_new_tokens": 10}
    tokens = response_token_lists(HFRollout(model, tok, rollout_config(response_length=10)).generate_sequences(batch))
    return tok.decode(tokens[0][2:3])


def run_turns(model, tok, caching: bool, micro_batch_size=None):
    """Four turns: each row's context grows by its output plus an 'observation' of its own length;
    row 1 finishes after turn 2. Returns every turn's outputs and the positions encoded."""
    stop = stop_string(model, tok)
    counting = CountingModel(model)
    rollout = HFRollout(counting, tok, rollout_config(response_length=10, enable_prefix_caching=caching,
                                                      micro_batch_size=micro_batch_size))
    contexts = [tok.encode(t) for t in ("Who was born first?", "<search> capital of France </search>", "The",
                                        "Which city is the capital")]
    outputs = []
    for turn in range(4):
        batch = build_prompt_batch(contexts, tok.pad_token_id)
        batch.meta_info = {"do_sample": False, "max_new_tokens": 10, "stop": [stop]}
        out = response_token_lists(rollout.generate_sequences(batch))
        outputs.append(out)
        observation = [tok.encode(f" result {i} of turn {turn}" * (1 + i)) for i in range(len(contexts))]
        contexts = [c + o + obs for c, o, obs in zip(contexts, out, observation)]
        if turn == 1:
            contexts = [c for i, c in enumerate(contexts) if i != 1]
    counting.hook.remove()
    return outputs, counting.tokens


def test_greedy_turns_from_the_cache_equal_re_encoding(model_and_tok):
    model, tok = model_and_tok
    plain, plain_tokens = run_turns(model, tok, caching=False)
    cached, cached_tokens = run_turns(model, tok, caching=True)
    assert cached == plain
    assert any(len(row) < 10 for turn in plain for row in turn)  # some rows stopped early
    assert cached_tokens < plain_tokens  # earlier turns were not encoded again
    split, _ = run_turns(model, tok, caching=True, micro_batch_size=2)  # caches of two micro-batches merged
    assert split == plain


def test_a_row_that_extends_no_cached_row_re_encodes_the_batch(model_and_tok):
    model, tok = model_and_tok
    rollout = HFRollout(model, tok, rollout_config(response_length=4))
    first = build_prompt_batch([tok.encode("The"), tok.encode("Who")], tok.pad_token_id)
    first.meta_info = {"do_sample": False}
    out = response_token_lists(rollout.generate_sequences(first))
    assert rollout.prefix_cache.batch is not None
    fresh = [tok.encode("The") + out[0] + tok.encode(" more"), tok.encode("Which city")]  # row 2 is new
    batch = build_prompt_batch(fresh, tok.pad_token_id)
    batch.meta_info = {"do_sample": False}
    got = response_token_lists(rollout.generate_sequences(batch))
    uncached = HFRollout(model, tok, rollout_config(response_length=4, enable_prefix_caching=False))
    want = response_token_lists(uncached.generate_sequences(batch))
    assert got == want
    rollout.clear_cache()
    assert rollout.prefix_cache.batch is None


def test_match_rows_pairs_each_row_with_a_distinct_prefix():
    assert match_rows([[1, 2], [1, 2], [7]], [[1, 2, 3], [1, 2, 4]]) == [0, 1]
    assert match_rows([[1, 2]], [[1, 2, 3], [1, 2, 4]]) is None  # one cached row cannot serve two
    assert match_rows([[1, 2, 3]], [[1, 2]]) is None


def test_concat_left_pads_shorter_batches_with_masked_columns():
    a = CachedBatch([(torch.ones(1, 1, 2, 1), torch.ones(1, 1, 2, 1))], torch.ones(1, 2, dtype=torch.long), [[1, 2]])
    b = CachedBatch([(2 * torch.ones(1, 1, 3, 1), torch.ones(1, 1, 3, 1))], torch.tensor([[0, 1, 1]]), [[3, 4]])
    merged = concat_batches([a, b])
    assert merged.mask.tolist() == [[0, 1, 1], [0, 1, 1]]
    assert merged.layers[0][0][:, 0, :, 0].tolist() == [[0.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    # selecting row 1 alone drops the column masked in it
    assert merged.select([1]).mask.tolist() == [[1, 1]]
    assert merged.select([1]).tokens == [[3, 4]]


def test_repeated_prompts_are_encoded_once_and_generate_as_before(model_and_tok):
    model, tok = model_and_tok
    prompts = ([tok.encode("Who was born first?")] * 3 + [tok.encode("The capital")] * 2
               + [tok.encode("Which city is the capital")])
    batch = build_prompt_batch(prompts, tok.pad_token_id)
    batch.meta_info = {"do_sample": False, "max_new_tokens": 6}
    shared = HFRollout(model, tok, rollout_config(response_length=6))
    plain = HFRollout(model, tok, rollout_config(response_length=6, enable_prefix_caching=False))
    got, want = shared.generate_sequences(batch), plain.generate_sequences(batch)
    assert response_token_lists(got) == response_token_lists(want)
    assert torch.allclose(got.batch["rollout_log_probs"], want.batch["rollout_log_probs"], atol=1e-5)
    # each distinct prompt but its last token once, then one token a row
    assert shared.prefill_tokens == sum(len(p) - 1 for p in {tuple(p) for p in prompts}) + len(prompts)
    assert plain.prefill_tokens == sum(len(p) for p in prompts)
    # the next turn continues from the cache the shared prefill started
    turn2 = [p + r + tok.encode(" result") for p, r in zip(prompts, response_token_lists(got))]
    batch2 = build_prompt_batch(turn2, tok.pad_token_id)
    batch2.meta_info = {"do_sample": False, "max_new_tokens": 6}
    got2, want2 = shared.generate_sequences(batch2), plain.generate_sequences(batch2)
    assert response_token_lists(got2) == response_token_lists(want2)
    assert shared.prefill_tokens < plain.prefill_tokens
