"""Micro-batches by a token budget (veRL's `use_dynamic_bsz` / `*_max_token_len_per_gpu`).

A micro-batch costs memory and compute for rows x (longest prompt + longest response) among its
rows: padding columns shared by all its rows are trimmed (torch_functional.trim_padding_columns),
the rest is paid. A fixed row count either wastes the budget on short rows or runs out of memory
on long ones; here rows are grouped, longest first, so that each group's padded size stays within
`max_token_len`. A single row longer than the budget forms a group of its own: rows are never cut.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from verl.protocol import DataProto
from verl.utils.distributed import world_size


def token_budget_groups(prompt_lengths: list[int], response_lengths: list[int], max_token_len: int) -> list[list[int]]:
    """Row indices grouped so that len(group) x (max prompt + max response length in the group)
    <= max_token_len (a lone row may exceed it); longest rows first.

    >>> token_budget_groups([2, 2, 2, 2], [8, 1, 3, 2], max_token_len=12)
    [[0], [2, 3], [1]]
    """
    if max_token_len < 1:
        raise ValueError(f"max_token_len must be >= 1, got {max_token_len}")
    order = sorted(range(len(prompt_lengths)), key=lambda i: (-(prompt_lengths[i] + response_lengths[i]), i))
    groups: list[list[int]] = []
    longest_prompt = longest_response = 0
    for i in order:
        if groups:
            p = max(longest_prompt, prompt_lengths[i])
            r = max(longest_response, response_lengths[i])
            if (len(groups[-1]) + 1) * (p + r) <= max_token_len:
                groups[-1].append(i)
                longest_prompt, longest_response = p, r
                continue
        groups.append([i])
        longest_prompt, longest_response = prompt_lengths[i], response_lengths[i]
    return groups


def split_to_count(groups: list[list[int]], count: int) -> list[list[int]]:
    """`groups` with the largest ones halved until there are `count` (at most one per row).

    >>> split_to_count([[0, 1, 2], [3]], 3)
    [[3], [0], [1, 2]]
    """
    groups = [list(g) for g in groups]
    while len(groups) < count:
        groups.sort(key=len)
        largest = groups.pop()
        if len(largest) < 2:
            raise ValueError(f"cannot make {count} micro-batches of {sum(map(len, groups)) + 1} rows")
        half = len(largest) // 2
        groups += [largest[:half], largest[half:]]
    return groups


def micro_batch_indices(data: DataProto, micro_batch_size: int, max_token_len: int | None = None) -> list[list[int]]:
    """Row indices of each micro-batch: consecutive `micro_batch_size` rows, or token-budget groups
    when `max_token_len` is given. Under FSDP every rank must run as many forwards as the others
    (each forward gathers parameters collectively), so token-budget groups are split until every
    rank has the largest count of any rank."""
    if max_token_len is None:
        return [list(range(start, min(start + micro_batch_size, len(data))))
                for start in range(0, len(data), micro_batch_size)]
    response_length = data.batch["responses"].shape[1]
    mask = data.batch["attention_mask"]
    prompt = mask[:, :-response_length].sum(-1).tolist()
    response = mask[:, -response_length:].sum(-1).tolist()
    groups = token_budget_groups(prompt, response, max_token_len)
    if world_size() > 1:
        count = torch.tensor([len(groups)], device=mask.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        groups = split_to_count(groups, int(count))
    return groups


def micro_batches(data: DataProto, micro_batch_size: int, max_token_len: int | None = None) -> list[DataProto]:
    """The micro-batches of `micro_batch_indices`, as DataProto views in that order."""
    return [data[torch.as_tensor(rows)] for rows in micro_batch_indices(data, micro_batch_size, max_token_len)]


def map_micro_batches(data: DataProto, micro_batch_size: int, max_token_len: int | None, fn) -> torch.Tensor:
    """cat(fn(micro) for each micro-batch) rearranged back to the rows' original order."""
    groups = micro_batch_indices(data, micro_batch_size, max_token_len)
    outputs = [fn(data[torch.as_tensor(rows)]) for rows in groups]
    order = torch.as_tensor([i for rows in groups for i in rows])
    result = torch.empty_like(torch.cat(outputs))
    result[order] = torch.cat(outputs)
    return result
