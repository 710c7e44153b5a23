"""The rollout interface every generation engine implements, and the padding helpers around it.

Prompts travel LEFT padded (so every row's last prompt token sits in the same column and new tokens
append on the right); responses travel RIGHT padded. The agent loop works on plain token lists and
converts through `build_prompt_batch` / `response_token_lists`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from verl.protocol import DataProto


class BaseRollout(ABC):
    """A generation engine: `generate_sequences(prompts) -> prompts + responses`.

    In: `input_ids`, `attention_mask`, `position_ids` [B, P] (left padded); `meta_info` may set
    `max_new_tokens`, `stop` (list[str]), `do_sample`, `temperature`, `top_p`.
    Out: `prompts` [B, P], `responses` [B, R] (right padded with the pad id), `input_ids`,
    `attention_mask`, `position_ids` [B, P+R], `response_mask` [B, R]; `R` = `max_new_tokens`
    for every call, so batches from different ranks or micro-batches concatenate.
    """

    @abstractmethod
    def generate_sequences(self, prompts: DataProto) -> DataProto:
        ...

    def clear_cache(self) -> None:
        """Forget cached keys/values (prefix caching): they belong to the weights that made them."""


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row; padding on the left gets 0."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def build_prompt_batch(token_lists: list[list[int]], pad_token_id: int) -> DataProto:
    """Left-pad token lists into `input_ids`, `attention_mask`, `position_ids` [B, max_len]."""
    width = max((len(t) for t in token_lists), default=0)
    input_ids = torch.full((len(token_lists), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        if tokens:
            input_ids[row, width - len(tokens):] = torch.as_tensor(tokens, dtype=torch.long)
            attention_mask[row, width - len(tokens):] = 1
    return DataProto.from_dict(
        {"input_ids": input_ids, "attention_mask": attention_mask,
         "position_ids": position_ids_from_mask(attention_mask)}
    )


def response_token_lists(data: DataProto) -> list[list[int]]:
    """The real tokens of each row's response (`responses` where `response_mask` is 1)."""
    responses = data.batch["responses"]
    mask = data.batch["response_mask"].bool()
    return [row[keep].tolist() for row, keep in zip(responses, mask)]


def pad_responses(token_lists: list[list[int]], width: int, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad response token lists to `width`: (responses, response_mask), both [B, width]."""
    responses = torch.full((len(token_lists), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        tokens = tokens[:width]
        responses[row, :len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
        mask[row, :len(tokens)] = 1
    return responses, mask


def prompt_token_lists(prompts: DataProto) -> list[list[int]]:
    """The real tokens of each (left padded) prompt row."""
    ids, mask = prompts.batch["input_ids"], prompts.batch["attention_mask"].bool()
    return [row[keep].tolist() for row, keep in zip(ids, mask)]


def assemble_output(prompts: DataProto, responses: torch.Tensor, response_mask: torch.Tensor) -> DataProto:
    """Join left-padded prompts and right-padded responses into the rollout's output batch.

    Response positions continue from each row's last prompt position (also over padding, where
    the attention mask hides them anyway), as a causal LM would number them.
    """
    prompt_ids = prompts.batch["input_ids"]
    prompt_mask = prompts.batch["attention_mask"]
    prompt_pos = prompts.batch["position_ids"]
    steps = torch.arange(1, responses.shape[1] + 1, dtype=prompt_pos.dtype)
    response_pos = prompt_pos[:, -1:] + steps.unsqueeze(0)
    return DataProto.from_dict(
        {
            "prompts": prompt_ids,
            "responses": responses,
            "input_ids": torch.cat([prompt_ids, responses], dim=-1),
            "attention_mask": torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=-1),
            "position_ids": torch.cat([prompt_pos, response_pos], dim=-1),
            "response_mask": response_mask,
        },
        meta_info=dict(prompts.meta_info),
    )


PROMPT_KEYS = ("prompts",)  # [B, P], left padded
SEQUENCE_KEYS = ("input_ids", "attention_mask", "position_ids")  # [B, P + R]


def concat_rollouts(batches: list[DataProto], pad_token_id: int) -> DataProto:
    """One batch of rollout batches whose prompt (P) and response (R) widths differ: prompts are left
    padded and responses right padded to the widest, then concatenated. `prompts` is prompt-aligned,
    `input_ids`/`attention_mask`/`position_ids` span both parts, every other 2-D tensor is
    response-aligned (responses, masks, scores, ...). Pads are `pad_token_id` for token ids, 0
    elsewhere; padded response positions continue each row's positions, as `assemble_output` does."""
    widths = [(b.batch["prompts"].shape[1], b.batch["responses"].shape[1]) for b in batches]
    P, R = max(p for p, _ in widths), max(r for _, r in widths)
    padded = []
    for batch, (p, r) in zip(batches, widths):
        tensors = {}
        for key, value in batch.batch.items():
            if value.dim() < 2:
                tensors[key] = value
                continue
            fill = pad_token_id if key in ("prompts", "responses", "input_ids") else 0
            if key in PROMPT_KEYS:
                tensors[key] = _pad(value, P - p, 0, fill)
            elif key in SEQUENCE_KEYS:
                prompt, response = value[:, :p], value[:, p:]
                if key == "position_ids":
                    steps = torch.arange(1, R - r + 1, dtype=value.dtype)
                    tail = value[:, -1:] + steps.unsqueeze(0)
                    tensors[key] = torch.cat([_pad(prompt, P - p, 0, 0), response, tail], dim=1)
                else:
                    tensors[key] = torch.cat([_pad(prompt, P - p, 0, fill), _pad(response, 0, R - r, fill)], dim=1)
            else:
                tensors[key] = _pad(value, 0, R - r, fill)
        padded.append(DataProto.from_dict(tensors, non_tensors=dict(batch.non_tensor_batch),
                                          meta_info=dict(batch.meta_info)))
    return DataProto.concat(padded)


def _pad(x: torch.Tensor, left: int, right: int, value) -> torch.Tensor:
    """`x` [B, W] with `left` and `right` columns of `value` added."""
    return torch.nn.functional.pad(x, (left, right), value=value)
