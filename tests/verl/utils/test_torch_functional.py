import math

import pytest
import torch

from verl.utils import torch_functional as F

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])  # keeps 1, 2, 4


def test_masked_sum_and_mean():
    assert F.masked_sum(VALUES, MASK).item() == 7.0  # 1 + 2 + 4
    assert F.masked_mean(VALUES, MASK).item() == pytest.approx(7 / 3, abs=1e-6)
    torch.testing.assert_close(F.masked_mean(VALUES, MASK, dim=-1), torch.tensor([1.5, 4.0]))  # (1+2)/2, 4/1
    torch.testing.assert_close(F.masked_sum(VALUES, MASK, dim=0), torch.tensor([5.0, 2.0, 0.0]))


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    assert F.masked_mean(VALUES, torch.zeros_like(MASK)).item() == 0.0
    torch.testing.assert_close(F.masked_mean(VALUES, torch.tensor([[1, 0, 0], [0, 0, 0]]), dim=-1), torch.tensor([1.0, 0.0]))


def test_masked_var_biased_and_unbiased():
    # kept 1, 2, 4: mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9
    assert F.masked_var(VALUES, MASK, unbiased=False).item() == pytest.approx(42 / 9 / 3, abs=1e-6)
    assert F.masked_var(VALUES, MASK, unbiased=True).item() == pytest.approx(42 / 9 / 2, abs=1e-6)
    assert F.masked_var(VALUES, torch.tensor([[0, 1, 0], [0, 0, 0]])).item() == 0.0  # one entry: no correction
    with pytest.raises(ValueError, match="no unmasked"):
        F.masked_var(VALUES, torch.zeros_like(MASK))


def test_masked_whiten_matches_hand_values():
    # kept 1, 2, 4: mean 7/3, unbiased var 7/3, so whitened x = (x - 7/3) / sqrt(7/3)
    out = F.masked_whiten(VALUES, MASK)
    s = math.sqrt(7 / 3 + 1e-8)
    expected = torch.tensor([(1 - 7 / 3) / s, (2 - 7 / 3) / s, (4 - 7 / 3) / s])  # the kept entries in row order
    torch.testing.assert_close(out[MASK.bool()], expected)
    # masked whitened entries have mean 0 and unbiased variance 1
    assert F.masked_mean(out, MASK).item() == pytest.approx(0.0, abs=1e-6)
    assert F.masked_var(out, MASK).item() == pytest.approx(1.0, abs=1e-5)
    # without shifting the mean, the mean is added back
    torch.testing.assert_close(F.masked_whiten(VALUES, MASK, shift_mean=False), out + 7 / 3)


def test_logprobs_from_logits_equals_log_softmax_gather():
    # logits [0, ln 3] -> probs [1/4, 3/4]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0]])
    torch.testing.assert_close(F.logprobs_from_logits(logits, labels), torch.tensor([[math.log(0.75), math.log(0.5)]]))
    big = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0)) * 30
    ids = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(1))
    ref = torch.log_softmax(big, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(F.logprobs_from_logits(big, ids), ref, rtol=0, atol=1e-5)


def test_entropy_from_logits():
    # uniform over 4 -> ln 4; probs [1/4, 3/4] -> -(1/4 ln 1/4 + 3/4 ln 3/4)
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e4, -1e4]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(F.entropy_from_logits(logits), torch.tensor([math.log(4.0), h]))


def test_clip_by_value_with_tensor_bounds():
    x = torch.tensor([0.0, 5.0, -5.0])
    low, high = torch.tensor([-1.0, 1.0, -2.0]), torch.tensor([1.0, 3.0, 2.0])
    torch.testing.assert_close(F.clip_by_value(x, low, high), torch.tensor([0.0, 3.0, -2.0]))
    torch.testing.assert_close(F.clip_by_value(x, -1.0, 1.0), torch.tensor([0.0, 1.0, -1.0]))


def test_padding_helpers():
    t = torch.tensor([[1, 2]])
    assert F.pad_sequence_to_length(t, 4, 0).tolist() == [[1, 2, 0, 0]]
    assert F.pad_sequence_to_length(t, 4, 9, left_pad=True).tolist() == [[9, 9, 1, 2]]
    assert F.pad_sequence_to_length(t, 1, 0) is t
    assert F.pad_2d_list_to_length([[1], [2, 3], []], 0).tolist() == [[1, 0], [2, 3], [0, 0]]
    assert F.pad_2d_list_to_length([[1], [2, 3]], 7, max_length=3, left_pad=True).tolist() == [[7, 7, 1], [7, 2, 3]]


def test_trim_padding_columns_drops_columns_padded_in_every_row():
    # P = 4 prompt columns (left padded), R = 4 response columns (right padded)
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0],
                              [0, 1, 1, 1, 1, 0, 0, 0]])
    batch = {"input_ids": torch.arange(16).view(2, 8), "attention_mask": attention,
             "position_ids": torch.arange(8).repeat(2, 1)}
    inputs, kept = F.trim_padding_columns(batch, response_length=4)
    assert kept == 2  # response columns 0 and 1 hold a token in some row
    assert inputs["input_ids"].tolist() == [[1, 2, 3, 4, 5], [9, 10, 11, 12, 13]]
    assert inputs["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]


def test_trim_padding_columns_keeps_the_last_prompt_column_when_no_response():
    batch = {"input_ids": torch.tensor([[0, 7, 8, 0, 0]]), "attention_mask": torch.tensor([[0, 1, 1, 0, 0]]),
             "position_ids": torch.tensor([[0, 0, 1, 2, 3]])}
    inputs, kept = F.trim_padding_columns(batch, response_length=2)
    assert kept == 0 and inputs["input_ids"].tolist() == [[7, 8]]
