"""RL prompts from parquet (veRL's columns) and a batch loader whose position can be saved.

A row has `data_source`, `prompt` (chat messages), `ability`, `reward_model` {style, ground_truth}
and `extra_info`. The prompt goes through the tokenizer's chat template with the generation
prompt appended; rows longer than `data.max_prompt_length` tokens are dropped
(`data.filter_overlong_prompts`) or truncated (`data.truncation`). A batch is a DataProto with
left-padded `input_ids`, `attention_mask`, `position_ids` [B, P] (P = longest prompt of the batch)
and every other column as a non-tensor key; with `data.return_raw_chat` the chat messages are also
the non-tensor key `raw_prompt` (veRL's name), for a rollout loop that renders them itself.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from verl.protocol import DataProto

TOKEN_KEYS = ("input_ids", "attention_mask", "position_ids")


def read_parquet_files(files: str | Sequence[str]) -> pd.DataFrame:
    files = [files] if isinstance(files, str) else list(files)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _to_python(value):
    """Parquet gives nested numpy arrays where the writer had lists; turn them back into lists."""
    if isinstance(value, np.ndarray):
        return [_to_python(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    return value


class RLHFDataset:
    """Tokenized prompts of one or more parquet files; `dataset[i]` is a dict for `collate`."""

    def __init__(self, files: str | Sequence[str], tokenizer, config):
        self.tokenizer = tokenizer
        self.prompt_key = config.prompt_key
        self.return_raw_chat = config.return_raw_chat
        self.max_prompt_length = int(config.max_prompt_length)
        self.truncation = config.truncation
        frame = read_parquet_files(files)
        if self.prompt_key not in frame.columns:
            raise KeyError(f"parquet has no column {self.prompt_key!r} (data.prompt_key); "
                           f"columns: {list(frame.columns)}")
        self.rows = [{k: _to_python(v) for k, v in row.items()} for row in frame.to_dict("records")]
        self.token_ids = [self._tokenize(row[self.prompt_key]) for row in self.rows]
        self.num_filtered = 0
        if config.filter_overlong_prompts:
            keep = [i for i, ids in enumerate(self.token_ids) if len(ids) <= self.max_prompt_length]
            self.num_filtered = len(self.rows) - len(keep)
            self.rows = [self.rows[i] for i in keep]
            self.token_ids = [self.token_ids[i] for i in keep]
        self.token_ids = [self._truncate(ids, i) for i, ids in enumerate(self.token_ids)]

    def _tokenize(self, messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _truncate(self, ids: list[int], row: int) -> list[int]:
        if len(ids) <= self.max_prompt_length:
            return ids
        if self.truncation == "left":
            return ids[-self.max_prompt_length:]
        if self.truncation == "right":
            return ids[: self.max_prompt_length]
        raise ValueError(f"prompt of row {row} has {len(ids)} tokens > data.max_prompt_length="
                         f"{self.max_prompt_length} (set data.filter_overlong_prompts or data.truncation)")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        item = {k: v for k, v in self.rows[i].items()}
        item["prompt_token_ids"] = self.token_ids[i]
        if self.return_raw_chat:
            item["raw_prompt"] = item[self.prompt_key]
        item.setdefault("index", i)
        return item

    def collate(self, items: list[dict]) -> DataProto:
        """Left-pad the prompts of `items` into one DataProto batch."""
        pad_id = self.tokenizer.pad_token_id
        width = max(len(item["prompt_token_ids"]) for item in items)
        input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            ids = item["prompt_token_ids"]
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        columns = [k for k in items[0] if k != "prompt_token_ids"]
        non_tensors = {}
        for key in columns:
            column = np.empty(len(items), dtype=object)
            column[:] = [item.get(key) for item in items]
            non_tensors[key] = column
        tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        return DataProto.from_dict(tensors, non_tensors)


class StatefulLoader:
    """Batches of a dataset, epoch after epoch, whose position survives a checkpoint.

    The order of epoch e is a permutation drawn from `seed + e` (or the file order when
    `shuffle` is false), so `state_dict()` = (epoch, batches served) is all it takes to resume.
    With `drop_last=False` the last partial batch is served too (validation sees every row).
    """

    def __init__(self, dataset: RLHFDataset, batch_size: int, shuffle: bool = True, seed: int = 1,
                 drop_last: bool = True):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if drop_last and len(dataset) < batch_size:
            raise ValueError(f"dataset has {len(dataset)} rows, fewer than one batch of {batch_size}")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self.batches_served = 0, 0

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(len(self.dataset), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.dataset))
        return np.random.default_rng(self.seed + epoch).permutation(len(self.dataset))

    def __iter__(self) -> Iterator[DataProto]:
        """The rest of the current epoch; the next `iter()` starts the following epoch."""
        order = self._order(self.epoch)
        while self.batches_served < len(self):
            start = self.batches_served * self.batch_size
            rows = order[start: start + self.batch_size]
            self.batches_served += 1
            yield self.dataset.collate([self.dataset[int(i)] for i in rows])
        self.epoch, self.batches_served = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_served": self.batches_served}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batches_served = int(state["epoch"]), int(state["batches_served"])
