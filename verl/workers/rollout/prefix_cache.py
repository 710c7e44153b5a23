"""Prefix caching across generate calls, for engines that re-receive a growing context every turn.

A multi-turn agent sends each turn the whole context again: prompt, earlier turns, retrieved
blocks. Re-encoding it costs a full forward over every earlier token per turn. `PrefixCache` keeps
the keys/values one call left behind; when every row of the next call extends the tokens of some
cached row, only the new tokens are encoded (vLLM's automatic prefix caching plays this role on GPU).

A cached batch is a `DynamicCache` whose rows may hold masked columns anywhere: left padding of the
first prompt, padding in front of a turn's new tokens (rows get different amounts of new tokens, so
they are left padded to one width), and the tokens a row "generated" after it had already stopped
while others went on. `mask` marks the columns that hold one of the row's real tokens; attention and
position ids (a cumulative sum of the mask) skip the rest, so the result is what the row would get
with no padding at all, up to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CachedBatch:
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values): [B, heads, L, head_dim]
    mask: torch.Tensor  # [B, L]: 1 where the column holds one of the row's real tokens
    tokens: list[list[int]]  # per row: the real tokens whose keys/values are cached, in order

    def select(self, rows: list[int]) -> "CachedBatch":
        """These rows, in this order, without the columns that are masked in all of them."""
        index = torch.as_tensor(rows, device=self.mask.device)
        mask = self.mask[index]
        keep = mask.bool().any(dim=0).nonzero().squeeze(-1)
        layers = [(k[index][:, :, keep], v[index][:, :, keep]) for k, v in self.layers]
        return CachedBatch(layers, mask[:, keep], [self.tokens[r] for r in rows])

    @property
    def length(self) -> int:
        return self.mask.shape[1]


def concat_batches(batches: list[CachedBatch]) -> CachedBatch:
    """One batch of all rows; shorter batches are left padded with masked zero columns."""
    width = max(b.length for b in batches)

    def pad(x: torch.Tensor, b: CachedBatch) -> torch.Tensor:
        missing = width - b.length
        if not missing:
            return x
        return torch.cat([x.new_zeros(*x.shape[:2], missing, *x.shape[3:]), x], dim=2)

    layers = [(torch.cat([pad(b.layers[i][0], b) for b in batches]), torch.cat([pad(b.layers[i][1], b) for b in batches]))
              for i in range(len(batches[0].layers))]
    mask = torch.cat([torch.cat([b.mask.new_zeros(b.mask.shape[0], width - b.length), b.mask], dim=1)
                      for b in batches])
    return CachedBatch(layers, mask, [t for b in batches for t in b.tokens])


def match_rows(cached: list[list[int]], rows: list[list[int]]) -> list[int] | None:
    """For each row, a distinct cached row whose tokens are a PROPER prefix of it; None when some
    row has none. Rows usually come in the cached order (finished ones left out), so the search
    starts after the previous match.

    >>> match_rows([[1, 2], [1, 3], [4]], [[1, 3, 9], [4, 5]])
    [1, 2]
    >>> match_rows([[1, 2]], [[1, 2]]) is None  # nothing new to encode
    True
    """
    taken: set[int] = set()
    matches = []
    start = 0
    for row in rows:
        found = None
        for offset in range(len(cached)):
            j = (start + offset) % len(cached)
            prefix = cached[j]
            if j not in taken and len(prefix) < len(row) and row[:len(prefix)] == prefix:
                found = j
                break
        if found is None:
            return None
        taken.add(found)
        matches.append(found)
        start = found + 1
    return matches


def continuation_inputs(cached: CachedBatch, rows: list[list[int]], pad_token_id: int):
    """(input_ids, attention_mask) [B, L + C] that continue `cached` (already selected in row order)
    with each row's new tokens, left padded to the longest new part C. The first L columns stand for
    the cached ones: generate skips the tokens its cache already holds, so their ids are never read."""
    new = [row[len(prefix):] for row, prefix in zip(rows, cached.tokens, strict=True)]
    width = max(len(t) for t in new)
    device = cached.mask.device
    chunk = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=device)
    chunk_mask = torch.zeros((len(rows), width), dtype=cached.mask.dtype, device=device)
    for i, tokens in enumerate(new):
        chunk[i, width - len(tokens):] = torch.as_tensor(tokens, dtype=torch.long)
        chunk_mask[i, width - len(tokens):] = 1
    placeholder = torch.full((len(rows), cached.length), pad_token_id, dtype=torch.long, device=device)
    return torch.cat([placeholder, chunk], dim=1), torch.cat([cached.mask, chunk_mask], dim=1)


def after_generate(layers: list[tuple[torch.Tensor, torch.Tensor]], input_mask: torch.Tensor,
                   rows: list[list[int]], kept: list[list[int]], generated_width: int) -> CachedBatch | None:
    """The cache a generate call left: its input columns, then the G - 1 generated tokens whose
    keys/values were computed (the last sampled token is never fed back). A row's generated column t
    is real while t < len(kept), its own tokens up to its stop; later ones are what it produced
    after stopping. None when the cache is not that shape (nothing to reuse)."""
    fed = max(generated_width - 1, 0)
    if not layers or layers[0][0].shape[2] != input_mask.shape[1] + fed:
        return None
    steps = torch.arange(fed, device=input_mask.device)
    lengths = torch.tensor([min(len(k), fed) for k in kept], device=input_mask.device)
    generated_mask = (steps.unsqueeze(0) < lengths.unsqueeze(1)).to(input_mask.dtype)
    mask = torch.cat([input_mask, generated_mask], dim=1)
    tokens = [list(row) + list(k[:n]) for row, k, n in zip(rows, kept, lengths.tolist(), strict=True)]
    return CachedBatch(list(layers), mask, tokens)


class PrefixCache:
    """The keys/values the last generate call left, for the next call to continue from."""

    def __init__(self):
        self.batch: CachedBatch | None = None

    def take(self, rows: list[list[int]]) -> CachedBatch | None:
        """The cached rows that `rows` extend, selected in their order; None (and the cache is
        dropped) when some row extends none. Either way the store is empty afterwards."""
        batch, self.batch = self.batch, None
        if batch is None:
            return None
        matches = match_rows(batch.tokens, rows)
        return None if matches is None else batch.select(matches)

    def put(self, batches: list[CachedBatch]) -> None:
        self.batch = concat_batches(batches) if batches else None

    def clear(self) -> None:
        """Drop the cache: its keys/values belong to the weights it was computed with."""
        self.batch = None
