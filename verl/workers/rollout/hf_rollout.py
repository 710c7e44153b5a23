"""Rollout with transformers `generate`: the CPU engine, and the simple reference on GPU.

`module` may be a plain HF causal LM or the actor's FSDP2-sharded one; in the sharded case every
forward all-gathers parameters collectively, so all ranks must run the same number of forwards:
`synced_gpus=True` keeps finished ranks stepping until the slowest one ends, and the caller
(the DP dispatch) gives every rank the same number of rows.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from omegaconf import DictConfig

from transformers import StoppingCriteria, StoppingCriteriaList

from verl.protocol import DataProto
from verl.utils.distributed import device
from verl.workers.rollout.base import BaseRollout, assemble_output, pad_responses


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


class HFRollout(BaseRollout):
    def __init__(self, module: torch.nn.Module, tokenizer, config: DictConfig):
        self.module = module
        self.tokenizer = tokenizer
        self.config = config

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        rows = len(prompts)
        micro = self.config.get("micro_batch_size", None) or rows
        outputs = [self._generate(part) for part in prompts.split(micro)]
        return DataProto.concat(outputs)

    def _sampling_kwargs(self, meta: dict) -> dict:
        do_sample = meta.get("do_sample", self.config.get("do_sample", True))
        temperature = float(meta.get("temperature", self.config.get("temperature", 1.0)))
        if not do_sample or temperature <= 0:  # veRL reads temperature 0 as greedy; HF would reject it
            return {"do_sample": False}
        return {
            "do_sample": True,
            "temperature": temperature,
            "top_p": meta.get("top_p", self.config.get("top_p", 1.0)),
            "top_k": max(0, int(meta.get("top_k", self.config.get("top_k", -1)))),  # veRL's -1 = off = HF's 0
        }

    @torch.no_grad()
    def _generate(self, prompts: DataProto) -> DataProto:
        meta = prompts.meta_info
        max_new_tokens = int(meta.get("max_new_tokens", self.config.response_length))
        stop = list(meta.get("stop") or [])
        pad_id, eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        input_ids = prompts.batch["input_ids"]
        kwargs = self._sampling_kwargs(meta)
        if stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_StopOnStrings(self.tokenizer, stop, input_ids.shape[1])])
        was_training = self.module.training
        self.module.eval()
        try:
            out = self.module.generate(
                input_ids=input_ids.to(self._device()),
                attention_mask=prompts.batch["attention_mask"].to(self._device()),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                synced_gpus=self._sharded() and dist.get_world_size() > 1,
                use_cache=True,
                **kwargs,
            )
        finally:
            self.module.train(was_training)
        generated = out[:, input_ids.shape[1]:].cpu().tolist()
        kept = [row[: self._row_length(row, eos_id, stop)] for row in generated]
        return assemble_output(prompts, *pad_responses(kept, max_new_tokens, pad_id))

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

    def _sharded(self) -> bool:
        # not "parameters are DTensors": after a forward FSDP2 may leave the root's ones unsharded
        return isinstance(self.module, FSDPModule)

    def _device(self) -> torch.device:
        # an FSDP2 shard may be offloaded to CPU while compute runs on the worker's device
        return device() if self._sharded() else next(self.module.parameters()).device
