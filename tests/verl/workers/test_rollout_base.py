"""Padding helpers of verl/workers/rollout/base.py, by hand."""
from __future__ import annotations

import torch

from verl.workers.rollout.base import (
    assemble_output,
    build_prompt_batch,
    concat_rollouts,
    pad_responses,
    prompt_token_lists,
    response_token_lists,
)


def test_build_prompt_batch_left_pads():
    batch = build_prompt_batch([[5, 6, 7], [8]], pad_token_id=0)
    assert batch.batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch.batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert prompt_token_lists(batch) == [[5, 6, 7], [8]]


def test_assemble_output_right_pads_and_round_trips():
    prompts = build_prompt_batch([[5, 6, 7], [8]], pad_token_id=0)
    responses, mask = pad_responses([[9], [10, 11, 12, 13]], width=3, pad_token_id=0)  # 2nd row cut to 3
    assert responses.tolist() == [[9, 0, 0], [10, 11, 12]]
    assert mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    out = assemble_output(prompts, responses, mask)
    assert out.batch["input_ids"].tolist() == [[5, 6, 7, 9, 0, 0], [0, 0, 8, 10, 11, 12]]
    assert out.batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    # responses continue from the last prompt position: row 0 ends at 2, row 1 at 0
    assert out.batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]]
    assert torch.equal(out.batch["prompts"], prompts.batch["input_ids"])
    assert response_token_lists(out) == [[9], [10, 11, 12]]


def test_rollouts_of_different_widths_concatenate_with_both_parts_repadded():
    def rollout(prompts, responses, width):
        batch = build_prompt_batch(prompts, pad_token_id=0)
        ids, mask = pad_responses(responses, width, pad_token_id=0)
        out = assemble_output(batch, ids, mask)
        out.batch["info_mask"] = torch.zeros_like(mask)
        out.batch["token_level_scores"] = mask.float()
        return out

    a = rollout([[5, 6], [7]], [[1, 2, 3], [4]], width=3)  # P 2, R 3
    b = rollout([[8, 9, 10, 11]], [[12]], width=1)  # P 4, R 1
    out = concat_rollouts([a, b], pad_token_id=0)
    assert out.batch["prompts"].tolist() == [[0, 0, 5, 6], [0, 0, 0, 7], [8, 9, 10, 11]]
    assert out.batch["responses"].tolist() == [[1, 2, 3], [4, 0, 0], [12, 0, 0]]
    assert out.batch["input_ids"].tolist() == [[0, 0, 5, 6, 1, 2, 3], [0, 0, 0, 7, 4, 0, 0], [8, 9, 10, 11, 12, 0, 0]]
    assert out.batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0]]
    # positions count real prompt tokens and continue through the response, padding included
    assert out.batch["position_ids"].tolist() == [[0, 0, 0, 1, 2, 3, 4], [0, 0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6]]
    assert out.batch["token_level_scores"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]
    assert response_token_lists(out) == [[1, 2, 3], [4], [12]]
