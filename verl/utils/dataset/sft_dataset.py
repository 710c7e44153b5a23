"""SFT data: sharegpt conversations -> token ids with a loss mask on the model's own tokens only.

Two conversation shapes (docs/architecture.md, "The agent's text"):

- agent trajectory: one `human` turn (optionally after a system prompt), then `gpt`, `observation`
  and `function_call` turns. The human turn goes through the tokenizer's chat template with the
  generation prompt; every later value is appended verbatim as ONE assistant continuation, then eos.
  `gpt`/`function_call` tokens and the eos carry loss; prompt and `observation` tokens (the
  retrieved `"\\n<information>\\n...\\n</information>\\n"` blocks) do not.
- plain chat: several human/gpt pairs, rendered fully by the chat template; loss on assistant turns.

Each piece of text is tokenized on its own, so a token never straddles a masked and an unmasked span
(the rollout tokenizes observations on their own too), and the joined ids must decode back to the
joined text, which catches tokenizers that add or drop characters at piece boundaries.

Files: a JSON list, JSONL or parquet of `{"conversations": [{"from", "value"}], "system"?}` rows, or a
dataset name registered in a LLaMA-Factory `dataset_info.json` (`formatting: sharegpt`, with its
`columns` and `tags` mapping) under `dataset_dir`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

HUMAN, GPT, OBSERVATION, FUNCTION_CALL, SYSTEM = "human", "gpt", "observation", "function_call", "system"
MODEL_ROLES = (GPT, FUNCTION_CALL)  # turns the model writes itself: they carry loss
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class ShareGPTLayout:
    """Where a row keeps its messages and what the roles are called (LLaMA-Factory's columns/tags)."""

    messages: str = "conversations"
    system: str = "system"
    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"

    @classmethod
    def from_dataset_info(cls, entry: dict[str, Any]) -> "ShareGPTLayout":
        columns, tags = entry.get("columns", {}), entry.get("tags", {})
        known = {"messages", "system", "tools"}
        unknown = set(columns) - known
        if unknown:
            raise ValueError(f"dataset_info columns {sorted(unknown)}: sharegpt uses only {sorted(known)}")
        fields = {k: columns[k] for k in ("messages", "system") if k in columns}
        for key, value in tags.items():
            if key not in cls.__dataclass_fields__ or key in ("messages", "system"):
                raise ValueError(f"dataset_info tags.{key}: unknown sharegpt tag")
            fields[key] = value
        return cls(**fields)


@dataclass(frozen=True)
class Conversation:
    """One row in canonical roles: `turns` are (role, text) with role in human/gpt/observation/function_call."""

    turns: tuple[tuple[str, str], ...]
    system: str | None = None

    @property
    def is_agent_trajectory(self) -> bool:
        return sum(role == HUMAN for role, _ in self.turns) == 1


def parse_row(row: dict[str, Any], layout: ShareGPTLayout = ShareGPTLayout(), where: str = "row") -> Conversation:
    """Map one raw sharegpt row to a Conversation, naming the row in every error."""
    if layout.messages not in row:
        raise ValueError(f"{where}: no '{layout.messages}' column (keys: {sorted(row)})")
    roles = {layout.user_tag: HUMAN, layout.assistant_tag: GPT, layout.observation_tag: OBSERVATION,
             layout.function_tag: FUNCTION_CALL, layout.system_tag: SYSTEM}
    system = row.get(layout.system) or None
    turns = []
    for i, message in enumerate(row[layout.messages]):
        tag = message.get(layout.role_tag)
        if tag not in roles:
            raise ValueError(f"{where}: message {i} has role {tag!r}, expected one of {sorted(roles)}")
        role, text = roles[tag], message.get(layout.content_tag)
        if not isinstance(text, str):
            raise ValueError(f"{where}: message {i} has no string '{layout.content_tag}'")
        if role == SYSTEM:  # LLaMA-Factory allows the system prompt as a leading message
            if i != 0:
                raise ValueError(f"{where}: a system message must come first (found at {i})")
            system = text
            continue
        turns.append((role, text))
    _check_order(turns, where)
    return Conversation(turns=tuple(turns), system=system)


def _check_order(turns: list[tuple[str, str]], where: str) -> None:
    if not turns or turns[0][0] != HUMAN:
        raise ValueError(f"{where}: the first turn must be human")
    if turns[-1][0] not in MODEL_ROLES:
        raise ValueError(f"{where}: the last turn must be the model's (gpt), found {turns[-1][0]}")
    if sum(role == HUMAN for role, _ in turns) == 1:
        return
    for i, (role, _) in enumerate(turns):  # plain chat: strict human/gpt alternation
        expected = HUMAN if i % 2 == 0 else GPT
        if role != expected:
            raise ValueError(f"{where}: a multi-turn chat must alternate human/gpt; turn {i} is {role}")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON list, JSONL or parquet file (a directory: all such files in it, sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in DATA_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no {'/'.join(DATA_SUFFIXES)} files inside")
        return [row for f in files for row in read_rows(f)]
    if path.suffix == ".parquet":
        import pandas as pd

        return [_plain(row) for row in pd.read_parquet(path).to_dict("records")]
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl" or not text.lstrip().startswith("["):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def _plain(value: Any) -> Any:
    """parquet gives numpy arrays for list columns; make them lists of dicts again."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def load_conversations(files: str | Sequence[str], dataset_dir: str | None = None) -> list[Conversation]:
    """Conversations of every entry: a data file/directory, or a dataset name in `dataset_dir/dataset_info.json`."""
    conversations = []
    for entry in [files] if isinstance(files, str) else list(files):
        if Path(entry).exists():
            path, layout = Path(entry), ShareGPTLayout()
        elif dataset_dir is not None:
            path, layout = _from_dataset_info(Path(dataset_dir), entry)
        else:
            raise FileNotFoundError(f"{entry}: no such file (set data.dataset_dir to use dataset_info.json names)")
        for i, row in enumerate(read_rows(path)):
            conversations.append(parse_row(row, layout, where=f"{path} row {i}"))
    return conversations


def _from_dataset_info(dataset_dir: Path, name: str) -> tuple[Path, ShareGPTLayout]:
    info_path = dataset_dir / "dataset_info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{name}: not a file, and {info_path} does not exist")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if name not in info:
        raise KeyError(f"{name}: not a file and not in {info_path} (has {sorted(info)})")
    entry = info[name]
    if entry.get("formatting", "alpaca") != "sharegpt":
        raise ValueError(f"{info_path} [{name}]: formatting must be 'sharegpt' (alpaca is not supported)")
    if "file_name" not in entry:
        raise ValueError(f"{info_path} [{name}]: only local datasets ('file_name') are supported")
    return dataset_dir / entry["file_name"], ShareGPTLayout.from_dataset_info(entry)


def render_pieces(conversation: Conversation, tokenizer) -> list[tuple[str, bool]]:
    """The conversation's full text as (piece, carries_loss) in order; see the module docstring."""
    head = [{"role": "system", "content": conversation.system}] if conversation.system else []
    if conversation.is_agent_trajectory:
        user = [{"role": "user", "content": conversation.turns[0][1]}]
        prompt = tokenizer.apply_chat_template(head + user, tokenize=False, add_generation_prompt=True)
        pieces = [(prompt, False)]
        pieces += [(text, role in MODEL_ROLES) for role, text in conversation.turns[1:] if text]
        return pieces + [(tokenizer.eos_token, True)]
    # Plain chat: the template renders everything; an assistant turn is what rendering it adds to
    # the prompt that asks for it, so each prefix rendering must extend the previous one.
    messages = head + [{"role": "user" if role == HUMAN else "assistant", "content": text}
                       for role, text in conversation.turns]
    pieces, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        asked = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        answered = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (asked.startswith(done) and answered.startswith(asked)):
            raise ValueError("chat template does not render conversations prefix by prefix; "
                             "cannot locate assistant turns exactly")
        pieces += [(asked[len(done):], False), (answered[len(asked):], True)]
        done = answered
    return [(text, loss) for text, loss in pieces if text]


def tokenize_conversation(conversation: Conversation, tokenizer, max_length: int, truncation: str = "right",
                          where: str = "row") -> dict[str, torch.Tensor]:
    """`input_ids` and `loss_mask` (1 where the token is a training target), both [T], T <= max_length."""
    ids, mask = [], []
    pieces = render_pieces(conversation, tokenizer)
    for text, loss in pieces:
        piece_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        mask += [int(loss)] * len(piece_ids)
    expected = "".join(text for text, _ in pieces)
    decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if decoded != expected:
        at = next((i for i, (a, b) in enumerate(zip(decoded, expected)) if a != b), min(len(decoded), len(expected)))
        raise ValueError(f"{where}: tokenized pieces decode to different text at char {at}: "
                         f"{decoded[at:at + 40]!r} vs {expected[at:at + 40]!r}")
    if len(ids) > max_length:
        if truncation == "error":
            raise ValueError(f"{where}: {len(ids)} tokens > data.max_length={max_length} (data.truncation=error)")
        ids, mask = ids[:max_length], mask[:max_length]  # right truncation keeps the mask aligned
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "loss_mask": torch.tensor(mask, dtype=torch.long)}


class SFTDataset(Dataset):
    """Tokenizes every conversation up front, so a bad row fails before training starts."""

    def __init__(self, files: str | Sequence[str], tokenizer, max_length: int, truncation: str = "right",
                 dataset_dir: str | None = None, progress: bool = True):
        if truncation not in ("right", "error"):
            raise ValueError(f"data.truncation={truncation!r}: expected right or error")
        conversations = load_conversations(files, dataset_dir)
        if not conversations:
            raise ValueError(f"{files}: no conversations")
        self.rows = [tokenize_conversation(c, tokenizer, max_length, truncation, where=f"{files} row {i}")
                     for i, c in enumerate(tqdm(conversations, desc="tokenize sft", disable=not progress))]
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]

    def collate(self, rows: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return collate(rows, self.pad_token_id)


def collate(rows: Sequence[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: input_ids, attention_mask, position_ids, loss_mask, all [B, T]."""
    length = max(len(r["input_ids"]) for r in rows)
    batch = {
        "input_ids": torch.full((len(rows), length), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(rows), length, dtype=torch.long),
        "loss_mask": torch.zeros(len(rows), length, dtype=torch.long),
    }
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        batch["input_ids"][i, :n] = r["input_ids"]
        batch["attention_mask"][i, :n] = 1
        batch["loss_mask"][i, :n] = r["loss_mask"]
    batch["position_ids"] = torch.arange(length).expand(len(rows), length).clone()
    return batch
