from __future__ import annotations

import pandas as pd
import pytest
from transformers import AutoTokenizer

from verl.trainer.config import schema_node
from verl.utils.dataset import RLHFDataset, StatefulLoader


def write_rows(path, questions):
    rows = [{
        "data_source": "nq" if i % 2 == 0 else "hotpotqa",
        "prompt": [{"role": "user", "content": q}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": [f"answer {i}"]}},
        "extra_info": {"split": "test", "index": i},
    } for i, q in enumerate(questions)]
    pd.DataFrame(rows).to_parquet(path)
    return path


def data_config(**overrides):
    return schema_node("data", {"max_prompt_length": 64, **overrides})


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_rows_are_chat_templated_left_padded_and_keep_columns(tmp_path, tokenizer):
    path = write_rows(tmp_path / "d.parquet", ["Who?", "Which city is the capital of France?"])
    dataset = RLHFDataset(str(path), tokenizer, data_config())
    batch = dataset.collate([dataset[0], dataset[1]])
    expected_short = tokenizer.apply_chat_template([{"role": "user", "content": "Who?"}], add_generation_prompt=True,
                                                   tokenize=False)
    ids, mask = batch.batch["input_ids"], batch.batch["attention_mask"]
    short = ids[0][mask[0].bool()].tolist()
    assert tokenizer.decode(short) == expected_short
    assert mask[1].all() and not mask[0, 0]  # the long row fills the width, the short one is LEFT padded
    assert ids[0, 0] == tokenizer.pad_token_id
    assert batch.batch["position_ids"][0, -1] == len(short) - 1
    assert batch.non_tensor_batch["reward_model"][1]["ground_truth"] == {"target": ["answer 1"]}  # lists, not arrays
    assert list(batch.non_tensor_batch["data_source"]) == ["nq", "hotpotqa"]
    assert batch.non_tensor_batch["extra_info"][1] == {"split": "test", "index": 1}


def test_overlong_prompts_are_filtered_or_truncated(tmp_path, tokenizer):
    path = write_rows(tmp_path / "d.parquet", ["Who?", "Who was born first? " * 20])
    assert len(RLHFDataset(str(path), tokenizer, data_config(max_prompt_length=24))) == 1
    left = RLHFDataset(str(path), tokenizer, data_config(max_prompt_length=24, filter_overlong_prompts=False,
                                                          truncation="left"))
    assert len(left) == 2 and len(left[1]["prompt_token_ids"]) == 24
    assert tokenizer.decode(left[1]["prompt_token_ids"]).endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="max_prompt_length=24"):
        RLHFDataset(str(path), tokenizer, data_config(max_prompt_length=24, filter_overlong_prompts=False))


def test_loader_covers_every_row_and_resumes_at_the_same_position(tmp_path, tokenizer):
    path = write_rows(tmp_path / "d.parquet", [f"question {i}?" for i in range(7)])
    dataset = RLHFDataset(str(path), tokenizer, data_config())
    val = StatefulLoader(dataset, batch_size=3, shuffle=False, drop_last=False)
    sizes = [len(b) for b in val]
    assert sizes == [3, 3, 1] and len(val) == 3  # the last partial batch is kept

    def indices(batch):
        return [info["index"] for info in batch.non_tensor_batch["extra_info"]]

    train = StatefulLoader(dataset, batch_size=2, shuffle=True, seed=3)
    uninterrupted = [indices(b) for _, b in zip(range(5), _epochs(train))]
    assert uninterrupted[:3] != [[0, 1], [2, 3], [4, 5]]  # shuffled
    assert uninterrupted[3:] != uninterrupted[:2]  # a new order in the second epoch
    first = StatefulLoader(dataset, batch_size=2, shuffle=True, seed=3)
    seen = [indices(b) for _, b in zip(range(2), _epochs(first))]
    resumed = StatefulLoader(dataset, batch_size=2, shuffle=True, seed=3)
    resumed.load_state_dict(first.state_dict())
    seen += [indices(b) for _, b in zip(range(3), _epochs(resumed))]
    assert seen == uninterrupted
    assert len(set(sum(uninterrupted[:3], []))) == 6  # one epoch = 3 full batches of distinct rows


def _epochs(loader):
    while True:
        yield from loader


def test_return_raw_chat_adds_the_messages_as_raw_prompt(tmp_path, tokenizer):
    path = write_rows(tmp_path / "d.parquet", ["Who?", "Where?"])
    raw = RLHFDataset(str(path), tokenizer, data_config(return_raw_chat=True))
    batch = raw.collate([raw[0], raw[1]])
    assert list(batch.non_tensor_batch["raw_prompt"]) == [[{"role": "user", "content": "Who?"}],
                                                          [{"role": "user", "content": "Where?"}]]
    without = RLHFDataset(str(path), tokenizer, data_config())
    assert "raw_prompt" not in without.collate([without[0]]).non_tensor_batch
    same_tokens = without.collate([without[0], without[1]]).batch["input_ids"]
    assert batch.batch["input_ids"].tolist() == same_tokens.tolist()
