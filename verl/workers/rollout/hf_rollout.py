"""Rollout with transformers `generate`: the CPU engine, and the simple reference on GPU.

`module` is a plain HF causal LM: in a PPO run, the actor worker's unsharded copy of the policy
(verl/workers/sharding_manager.py), so each rank generates alone, with no collective per token.

With `enable_prefix_caching` (the default) a call whose rows all extend rows of the previous call
encodes only their new tokens (verl/workers/rollout/prefix_cache.py): a multi-turn agent's later
turns then cost their observation and new tokens, not the whole context again. A call that extends
nothing but repeats prompts (GRPO's n samples of a question) encodes each distinct prompt once. The
owner of the weights calls `clear_cache()` whenever they change.

Besides the tokens it returns `rollout_log_probs` [B, R] (float32, 0 on padding): the log-prob of
each sampled token under log_softmax(logits / temperature), the distribution the trainer scores
(dp_actor), without top-k/top-p truncation, so the two can be compared token by token. Greedy rows
get the log-probs of the unscaled distribution (temperature 1), the one a trainer at temperature 1
scores. Processors that the model's own generation config adds (a repetition penalty, say) change
what is sampled without being in either number; the trainer's `rollout/logprob_diff_*` shows them.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from omegaconf import DictConfig

from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicLayer

from verl.protocol import DataProto
from verl.workers.rollout.base import BaseRollout, assemble_output, build_prompt_batch, pad_responses, prompt_token_lists
from verl.workers.rollout.prefix_cache import CachedBatch, PrefixCache, after_generate, continuation_inputs


class _StopOnStrings(StoppingCriteria):
    """Ends a row once its GENERATED text contains a stop string.

    transformers' own `stop_strings` also matches across the prompt/response boundary (a prompt
    ending in "</sea" plus a generated "rch>"), which the rollout contract excludes. Only the tail
    can hold a new match: a stop string of n bytes spans at most n byte-level tokens.
    """

    def __init__(self, tokenizer, stop: list[str], prompt_length: int):
        self.tokenizer, self.stop, self.prompt_length = tokenizer, stop, prompt_length
        self.tail = max(len(s.encode()) for s in stop) + 1

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_length:]
        tails = self.tokenizer.batch_decode(generated[:, -self.tail:], skip_special_tokens=False)
        return torch.tensor([any(s in t for s in self.stop) for t in tails], device=input_ids.device)


class _SampledLogProbs(LogitsProcessor):
    """Records, step by step, the log-prob of the token sampled at each step, without holding the
    [B, steps, V] scores. generate runs custom processors before its temperature/top-k/top-p
    warpers, so each call sees the step's raw logits; it keeps their log-softmax at `temperature`
    until the next call, whose input ids end with the token sampled from it. The last step's token
    is gathered by `log_probs` once generate returned."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.previous: torch.Tensor | None = None  # [B, V] log-softmax of the last step
        self.gathered: list[torch.Tensor] = []  # [B] per step already sampled

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self._gather(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def _gather(self, tokens: torch.Tensor) -> None:
        self.gathered.append(self.previous.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))

    def log_probs(self, sequences: torch.Tensor, steps: int) -> torch.Tensor:
        """[B, steps] float32 on the CPU: the log-prob of each of the `steps` tokens ending `sequences`."""
        if steps and len(self.gathered) < steps:
            self._gather(sequences[:, -1])
        if len(self.gathered) != steps:
            raise RuntimeError(f"recorded {len(self.gathered)} sampled tokens for {steps} generated steps")
        if not steps:
            return torch.zeros(sequences.shape[0], 0)
        return torch.stack(self.gathered, dim=1).float().cpu()


class HFRollout(BaseRollout):
    def __init__(self, module: torch.nn.Module, tokenizer, config: DictConfig):
        self.module = module
        self.tokenizer = tokenizer
        self.config = config
        self.prefix_cache = PrefixCache()
        # what prefill encoded so far: real tokens, and positions including padding (benches read them)
        self.prefill_tokens = self.prefill_positions = 0

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        rows = len(prompts)
        micro = self.config.micro_batch_size or rows
        tokens = prompt_token_lists(prompts)
        cached = None
        if self.prefix_caching:
            cached = self.prefix_cache.take(tokens)
            if cached is None:
                cached = self._shared_prompts(tokens)
        outputs, left = [], []
        for start in range(0, rows, micro):
            part = range(start, min(start + micro, rows))
            output, cache = self._generate(prompts[start:part.stop], [tokens[i] for i in part],
                                           cached.select(list(part)) if cached is not None else None)
            outputs.append(output)
            left.append(cache)
        if self.prefix_caching and all(c is not None for c in left):
            self.prefix_cache.put(left)
        return DataProto.concat(outputs)

    @property
    def prefix_caching(self) -> bool:
        return self.config.enable_prefix_caching

    def clear_cache(self) -> None:
        self.prefix_cache.clear()

    @torch.no_grad()
    def _shared_prompts(self, tokens: list[list[int]]) -> CachedBatch | None:
        """When some rows repeat a prompt (a group's n samples), each distinct prompt but its last
        token encoded once and copied to its rows: generate then encodes one token a row. None when
        no prompt repeats."""
        distinct = list(dict.fromkeys(tuple(row) for row in tokens))
        if len(distinct) == len(tokens) or min(len(row) for row in distinct) < 2:
            return None
        prefixes = [list(row[:-1]) for row in distinct]
        batch = build_prompt_batch(prefixes, self.tokenizer.pad_token_id).to(self._device()).batch
        self.prefill_tokens += int(batch["attention_mask"].sum())
        self.prefill_positions += batch["input_ids"].numel()
        cache = DynamicCache()
        with self._eval_mode():
            # position ids as generate numbers a left-padded row: its real tokens from 0
            self.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"], past_key_values=cache, use_cache=True, logits_to_keep=1)
        layers = plain_layers(cache)
        if layers is None:
            return None
        index = {row: i for i, row in enumerate(distinct)}
        return CachedBatch(layers, batch["attention_mask"], prefixes).select([index[tuple(row)] for row in tokens])

    @contextmanager
    def _eval_mode(self):
        """The module in eval mode for the block, then back in the mode it was in."""
        was_training = self.module.training
        self.module.eval()
        try:
            yield
        finally:
            self.module.train(was_training)

    def _sampling_kwargs(self, meta: dict) -> dict:
        do_sample = meta.get("do_sample", self.config.do_sample)
        temperature = float(meta.get("temperature", self.config.temperature))
        if not do_sample or temperature <= 0:  # veRL reads temperature 0 as greedy; HF would reject it
            return {"do_sample": False}
        return {
            "do_sample": True,
            "temperature": temperature,
            "top_p": meta.get("top_p", self.config.top_p),
            "top_k": max(0, int(meta.get("top_k", self.config.top_k))),  # veRL's -1 = off = HF's 0
        }

    @torch.no_grad()
    def _generate(self, prompts: DataProto, tokens: list[list[int]],
                  cached: CachedBatch | None) -> tuple[DataProto, CachedBatch | None]:
        """Generate for one micro-batch, from `cached` when given; returns its output and the cache
        it leaves (None when it leaves nothing reusable)."""
        meta = prompts.meta_info
        max_new_tokens = int(meta.get("max_new_tokens", self.config.response_length))
        stop = list(meta.get("stop") or [])
        pad_id, eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        target = self._device()
        if cached is None:
            input_ids, attention_mask = prompts.batch["input_ids"].to(target), prompts.batch["attention_mask"].to(target)
            cache, cached_length = DynamicCache(), 0
        else:
            input_ids, attention_mask = continuation_inputs(cached, tokens, pad_id)
            cache, cached_length = DynamicCache(ddp_cache_data=cached.layers), cached.length
        self.prefill_tokens += int(attention_mask[:, cached_length:].sum())
        self.prefill_positions += input_ids.shape[0] * (input_ids.shape[1] - cached_length)
        kwargs = self._sampling_kwargs(meta)
        # greedy rows are scored under the unscaled distribution (module docstring)
        recorder = _SampledLogProbs(kwargs["temperature"] if kwargs["do_sample"] else 1.0)
        kwargs["logits_processor"] = LogitsProcessorList([recorder])
        if stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_StopOnStrings(self.tokenizer, stop, input_ids.shape[1])])
        with self._eval_mode():
            out = self.module.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=cache,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                use_cache=True,
                **kwargs,
            )
        generated = out[:, input_ids.shape[1]:].cpu().tolist()
        kept = [row[: self._row_length(row, eos_id, stop)] for row in generated]
        output = assemble_output(prompts, *pad_responses(kept, max_new_tokens, pad_id))
        log_probs = recorder.log_probs(out, out.shape[1] - input_ids.shape[1])
        output.batch["rollout_log_probs"] = pad_log_probs(log_probs, [len(k) for k in kept], max_new_tokens)
        layers = plain_layers(cache) if self.prefix_caching else None
        if layers is None:
            return output, None
        return output, after_generate(layers, attention_mask, tokens, kept, len(generated[0]) if generated else 0)

    def _row_length(self, tokens: list[int], eos_id: int, stop: list[str]) -> int:
        """Tokens kept in a row: through its first eos or the token completing its first stop string."""
        n = tokens.index(eos_id) + 1 if eos_id in tokens else len(tokens)
        if stop and self._has_stop(tokens[:n], stop):
            # "prefix contains a stop string" is monotone in the prefix length: binary search for
            # the shortest prefix (decoding is byte-level, so a token may end past the stop string).
            lo, hi = 1, n
            while lo < hi:
                mid = (lo + hi) // 2
                if self._has_stop(tokens[:mid], stop):
                    hi = mid
                else:
                    lo = mid + 1
            n = lo
        return n

    def _has_stop(self, tokens: list[int], stop: list[str]) -> bool:
        text = self.tokenizer.decode(tokens, skip_special_tokens=False)
        return any(s in text for s in stop)

    def _device(self) -> torch.device:
        return next(self.module.parameters()).device


def plain_layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Each layer's (keys, values) when every layer is a plain growing one (a sliding-window or
    quantised layer holds something else); None otherwise."""
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    return [(layer.keys, layer.values) for layer in cache.layers]


def pad_log_probs(log_probs: torch.Tensor, lengths: list[int], width: int) -> torch.Tensor:
    """[B, width] float32: each row's first `lengths[i]` values of `log_probs` [B, steps], 0 after."""
    steps = log_probs.shape[1]
    kept = torch.arange(steps).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return torch.nn.functional.pad(torch.where(kept, log_probs, 0.0), (0, width - steps)).float()
