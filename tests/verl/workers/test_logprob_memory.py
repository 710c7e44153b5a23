"""The actor scores response tokens from the LM head in chunks of tokens: the same log-probs,
entropies and gradients as the whole [N, V] logits, with a peak memory that does not grow with N."""
from __future__ import annotations

import weakref

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoModelForCausalLM, CohereConfig, Gemma2Config, LlamaConfig

from verl.protocol import DataProto
from verl.utils.lora import apply_lora
from verl.utils.torch_functional import (entropy_from_logits, logprobs_from_logits, token_scores_in_chunks,
                                         trim_padding_columns)
from verl.workers.actor import dp_actor
from verl.workers.actor.dp_actor import DataParallelPPOActor, check_plain_head, policy_loss_mask
from verl.workers.rollout.base import assemble_output, build_prompt_batch

from test_fsdp_workers import actor_config

TEMPERATURE = 0.7


def ragged_batch(vocab: int, prompt_lengths: list[int], response_lengths: list[int], width: int, seed: int = 0):
    """Left-padded prompts and right-padded responses of the given lengths (pad id 0), a retrieved
    span in row 0 (not scored under state masking)."""
    g = torch.Generator().manual_seed(seed)
    prompts = build_prompt_batch([torch.randint(3, vocab, (n,), generator=g).tolist() for n in prompt_lengths], 0)
    mask = (torch.arange(width) < torch.tensor(response_lengths)[:, None]).long()
    responses = torch.where(mask.bool(), torch.randint(3, vocab, mask.shape, generator=g), 0)
    data = assemble_output(prompts, responses, mask)
    info = torch.zeros_like(mask)
    info[0, 1:3] = mask[0, 1:3]
    data.batch["info_mask"] = info
    data.meta_info = {"temperature": TEMPERATURE}
    return data


def whole_logits_scores(model, data: DataProto):
    """The unchunked computation: the model's own [N, V] logits at the scoring positions."""
    batch = data.batch
    scored = policy_loss_mask(data, state_masking=True).bool()
    width = batch["responses"].shape[1]
    inputs, kept = trim_padding_columns(batch, width)
    logits = model(**inputs, use_cache=False).logits.float()[:, -kept - 1:-1] / TEMPERATURE
    labels, kept_scored = batch["responses"][:, :kept], scored[:, :kept]

    def in_rows(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(scored.shape).masked_scatter(scored, values)

    return (in_rows(logprobs_from_logits(logits[kept_scored], labels[kept_scored])),
            in_rows(entropy_from_logits(logits[kept_scored])))


def chunked_scores(model, data: DataProto):
    """The actor's computation, HEAD_CHUNK_TOKENS tokens at a time."""
    actor = DataParallelPPOActor(actor_config("unused").actor, model)
    return actor._log_probs(data, TEMPERATURE, with_entropy=True, entropy_grad=True)


def scores_and_gradients(model, score, data: DataProto):
    """Log-probs, entropies and the gradients of a loss that weighs both (every trainable weight)."""
    model.zero_grad()
    log_probs, entropy = score(model, data)
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(2, *log_probs.shape, generator=g)
    ((log_probs * weights[0]).sum() + (entropy * weights[1]).sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return log_probs.detach(), entropy.detach(), grads


def assert_same_scores(model, data: DataProto):
    want = scores_and_gradients(model, whole_logits_scores, data)
    got = scores_and_gradients(model, chunked_scores, data)
    scored = policy_loss_mask(data, state_masking=True).bool()
    assert scored.sum() > 2 * dp_actor.HEAD_CHUNK_TOKENS  # several chunks
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-6)
    assert torch.all(got[0][~scored] == 0) and torch.all(got[1][~scored] == 0)
    assert sorted(got[2]) == sorted(want[2])
    for name, grad in want[2].items():  # fp32 rounding of other matmul shapes, relative to the largest entry
        torch.testing.assert_close(got[2][name], grad, atol=1e-6 * float(grad.abs().max()), rtol=0)
    return got


def test_token_scores_in_chunks_equal_whole_logits_for_any_chunk():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(7, 8, requires_grad=True)
    labels = torch.randint(0, 11, (7,))
    logits = head(hidden) / 0.5
    want = [logprobs_from_logits(logits, labels), entropy_from_logits(logits)]
    want_grads = torch.autograd.grad(want[0].sum() + 2 * want[1].sum(), (hidden, head.weight))
    for chunk in (1, 3, 7, 50):
        log_probs, entropy = token_scores_in_chunks(hidden, labels, head, 0.5, chunk, True, entropy_grad=True)
        torch.testing.assert_close(log_probs, want[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(entropy, want[1], atol=1e-6, rtol=1e-6)
        grads = torch.autograd.grad(log_probs.sum() + 2 * entropy.sum(), (hidden, head.weight))
        for got, expected in zip(grads, want_grads):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    # without entropy_grad the entropy is reported but carries no gradient
    log_probs, entropy = token_scores_in_chunks(hidden, labels, head, 0.5, 3, True)
    assert log_probs.requires_grad and not entropy.requires_grad
    assert token_scores_in_chunks(hidden, labels, head, 0.5, 3, False)[1] is None
    with pytest.raises(ValueError, match="7 hidden states for 6 labels"):
        token_scores_in_chunks(hidden, labels[:6], head, 0.5, 3, False)


def test_chunked_log_probs_entropies_and_gradients_equal_whole_logits(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(dp_actor, "HEAD_CHUNK_TOKENS", 5)  # the last chunk is shorter
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, as SmolLM2
    data = ragged_batch(model.config.vocab_size, [3, 9, 2, 6], [7, 2, 9, 5], width=9)
    assert_same_scores(model, data)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # an adapter on the tied head
def test_chunked_scores_use_a_lora_adapted_head(tiny_model_dir, monkeypatch):
    """The head is applied as the module it is: with an adapter on lm_head (and on attention), the
    chunked scores and the adapters' gradients equal the model's own logits'."""
    monkeypatch.setattr(dp_actor, "HEAD_CHUNK_TOKENS", 4)
    lora = OmegaConf.create({"lora_rank": 4, "lora_alpha": 8.0, "target_modules": ["q_proj", "v_proj", "lm_head"]})
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora)
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if ".lora_B." in name:  # non-zero, so the adapters change the logits
            torch.nn.init.normal_(param, std=0.5)
    data = ragged_batch(model.config.vocab_size, [4, 2, 8], [9, 6, 3], width=9, seed=1)
    got = assert_same_scores(model, data)
    assert any("lm_head.lora_A" in name for name in got[2]) and all(".lora_" in name for name in got[2])
    head, probe = model.get_output_embeddings(), torch.ones(1, model.config.hidden_size)
    assert (head(probe) - head.base_layer(probe)).abs().max() > 0.1  # the adapter is not a no-op


def test_models_that_transform_logits_after_the_head_are_refused_by_name():
    """The scores are computed from the head's output: a soft-cap or scale applied after it would be lost."""
    with pytest.raises(ValueError, match=r"final_logit_softcapping=30.0"):
        check_plain_head(Gemma2Config())
    with pytest.raises(ValueError, match=r"logit_scale=0.0625"):
        check_plain_head(CohereConfig())
    check_plain_head(Gemma2Config(final_logit_softcapping=None))
    check_plain_head(LlamaConfig())


class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the block (forward and backward ops) that
    are alive at the same time; a storage counts until it is freed (a weakref finalizer)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.storages: set[int] = set()

    def _freed(self, key: int, nbytes: int) -> None:
        self.storages.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self.storages:  # a view or an in-place result
                continue
            self.storages.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key, nbytes)
        return out


def peak_bytes(model, score, data: DataProto) -> int:
    model.zero_grad(set_to_none=True)
    with LiveTensorPeak() as meter:
        log_probs, entropy = score(model, data)
        (log_probs.sum() + entropy.sum()).backward()
        del log_probs, entropy
    return meter.peak


def test_peak_memory_of_scoring_does_not_grow_with_the_tokens(monkeypatch):
    """At a vocabulary where [N, V] logits dominate, the whole-logits peak doubles with N; the chunked
    one stays at a few [chunk, V] buffers, in forward and backward."""
    monkeypatch.setattr(dp_actor, "HEAD_CHUNK_TOKENS", 32)
    vocab, response = 8192, 32
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    peaks = {}
    for rows in (8, 16):  # N = 256 and 512 scored tokens (less row 0's two retrieved ones)
        data = ragged_batch(vocab, [4] * rows, [response] * rows, width=response)
        peaks["whole", rows] = peak_bytes(model, whole_logits_scores, data)
        peaks["chunked", rows] = peak_bytes(model, chunked_scores, data)
    logits_bytes = 256 * vocab * 4  # one fp32 [N, V] at N = 256: 8 MiB
    print({key: f"{value / 2**20:.1f} MiB" for key, value in peaks.items()})
    assert peaks["whole", 8] > 2 * logits_bytes
    assert peaks["whole", 16] > 1.8 * peaks["whole", 8]
    assert peaks["chunked", 8] < peaks["whole", 8] / 5
    assert peaks["chunked", 16] < 1.1 * peaks["chunked", 8]
