"""The RL and evaluation data scripts write veRL's parquet schema with our instruction texts."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from rag_r1.llm_agent.prompts import MULTI_QUERY_INSTRUCTION, SINGLE_QUERY_INSTRUCTION
from scripts.data_process import hotpotqa_search, qa_eval_sets
from verl.utils.dataset.rl_dataset import RLHFDataset

COLUMNS = ["data_source", "prompt", "ability", "reward_model", "extra_info"]


def write_split(directory, items):
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("train_data.json", "test_data.json"):
        (directory / name).write_text(json.dumps(items))


@pytest.mark.parametrize("mode, instruction", [("single", SINGLE_QUERY_INSTRUCTION), ("multi", MULTI_QUERY_INSTRUCTION)])
def test_rows_schema_and_prompt_text(tmp_path, mode, instruction):
    write_split(tmp_path / "in", [{"question": "  Who wrote Hamlet ", "golden_answers": "William Shakespeare"},
                                  {"question": "Which is older, A or B?", "golden_answers": "A"}])
    counts = hotpotqa_search.main(["--input-dir", str(tmp_path / "in"), "--out", str(tmp_path / "out")], mode=mode)
    assert counts == {"train": 2, "test": 2}
    frame = pd.read_parquet(tmp_path / "out" / "train.parquet")
    assert list(frame.columns) == COLUMNS
    row = frame.iloc[0]
    assert row["data_source"] == "hotpotqa" and row["ability"] == "fact-reasoning"
    # a question without a final "?" gets one; the text is the mode's instruction + question
    assert [dict(m) for m in row["prompt"]] == [{"role": "user", "content": instruction + "Who wrote Hamlet?"}]
    assert frame.iloc[1]["prompt"][0]["content"] == instruction + "Which is older, A or B?"
    assert row["reward_model"]["style"] == "rule"
    assert list(row["reward_model"]["ground_truth"]["target"]) == ["William Shakespeare"]
    assert row["extra_info"]["split"] == "train" and row["extra_info"]["index"] == 0


def test_instructions_differ_only_in_the_search_part():
    assert "comma" in MULTI_QUERY_INSTRUCTION and "three" in MULTI_QUERY_INSTRUCTION
    assert "comma" not in SINGLE_QUERY_INSTRUCTION
    for text in (SINGLE_QUERY_INSTRUCTION, MULTI_QUERY_INSTRUCTION):
        assert all(tag in text for tag in ("<think>", "<search>", "</search>", "<information>", "<answer>"))
        assert text.endswith("Question: ")


def test_real_rl_split_reads_back_through_the_trainer_dataset(shared_data, tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from verl.trainer.config import schema_node

    source = shared_data / "ragr1_rl" / "hotpotqa_train_filter_mq"
    counts = hotpotqa_search.main(["--input-dir", str(source), "--out", str(tmp_path), "--limit", "20"], mode="multi")
    assert counts == {"train": 20, "test": 20}
    first = json.loads((source / "train_data.json").read_text())[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset = RLHFDataset(str(tmp_path / "train.parquet"), tokenizer,
                          schema_node("data", {"max_prompt_length": 4096}))
    assert len(dataset) == 20
    item = dataset[0]
    assert item["reward_model"]["ground_truth"] == {"target": [first["golden_answers"]]}
    text = tokenizer.decode(item["prompt_token_ids"])
    assert text == ("<|im_start|>user\n" + MULTI_QUERY_INSTRUCTION + first["question"].strip()
                    + "<|im_end|>\n<|im_start|>assistant\n")


def test_eval_sets_keep_ids_and_supporting_ids(shared_data, tmp_path):
    counts = qa_eval_sets.main(["--input-dir", str(shared_data / "hotpotqa_closed"), "--sets", "test",
                                "--data-source", "hotpotqa_closed", "--out", str(tmp_path)])
    assert counts == {"test": 97}
    first = json.loads((shared_data / "hotpotqa_closed" / "test.jsonl").read_text().splitlines()[0])
    row = pd.read_parquet(tmp_path / "test.parquet").iloc[0]
    assert row["data_source"] == "hotpotqa_closed"
    assert row["extra_info"]["id"] == first["id"]
    assert list(row["extra_info"]["supporting_ids"]) == first["supporting_ids"]
    assert row["prompt"][0]["content"] == MULTI_QUERY_INSTRUCTION + first["question"]


def test_eval_sets_name_missing_files(tmp_path):
    with pytest.raises(SystemExit, match="no nq.jsonl"):
        qa_eval_sets.main(["--input-dir", str(tmp_path), "--sets", "nq", "--out", str(tmp_path / "o")])


def test_the_instruction_states_the_agents_query_settings(tmp_path):
    from rag_r1.llm_agent.prompts import instruction

    (tmp_path / "nq.jsonl").write_text(json.dumps({"id": "1", "question": "Who?", "golden_answers": ["A"]}) + "\n")
    qa_eval_sets.main(["--input-dir", str(tmp_path), "--sets", "nq", "--out", str(tmp_path / "o"), "--mode", "multi",
                       "--max-queries", "2", "--query-delimiter", ";"])
    prompt = pd.read_parquet(tmp_path / "o" / "nq.parquet").iloc[0]["prompt"][0]["content"]
    assert prompt == instruction("multi", 2, ";") + "Who?"
    assert "up to two short queries, separated by semicolons" in prompt


# the underscore spellings that earlier commands used, each still accepted beside the dashed flag
UNDERSCORE_ALIASES = {"--input-dir": "--input_dir", "--data-source": "--data_source",
                      "--max-queries": "--max_queries", "--query-delimiter": "--query_delimiter"}


@pytest.mark.parametrize("script", [hotpotqa_search, qa_eval_sets])
def test_dashed_flags_and_their_underscore_aliases_parse_alike(script):
    dashed = ["--input-dir", "in", "--out", "o", "--data-source", "src", "--max-queries", "2", "--query-delimiter", ";"]
    underscored = [UNDERSCORE_ALIASES.get(word, word) for word in dashed]
    assert underscored != dashed
    args = script.build_parser().parse_args(dashed)
    assert (args.input_dir, args.data_source, args.max_queries, args.query_delimiter) == (Path("in"), "src", 2, ";")
    assert vars(script.build_parser().parse_args(underscored)) == vars(args)


@pytest.mark.parametrize("script", [hotpotqa_search, qa_eval_sets])
def test_help_lists_both_spellings_of_a_flag_on_one_line(script):
    lines = script.build_parser().format_help().splitlines()
    for dashed, underscored in UNDERSCORE_ALIASES.items():
        value = dashed.removeprefix("--").replace("-", "_").upper()
        assert f"  {dashed}, {underscored} {value}" in lines
        assert not any(line.lstrip().startswith(underscored) for line in lines)  # no entry of its own
