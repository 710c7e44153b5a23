"""Rejection sampling keeps only EM = 1 trajectories; cut samples never train on retrieved text."""
from __future__ import annotations

import json

import pytest

from rag_r1.llm_agent.prompts import invalid_action_note, user_content
from rag_r1.sft.build_from_rollouts import build, cut_conversations, cut_trajectory, main, split_response

PROMPT = "Answer the given question. Question: Which city is the capital of France?"
GPT_1 = "<think> I need to search. </think>\n<search> capital of France, population of Paris </search>"
INFO_1 = "Doc 1(Title: Paris) Paris is the capital of France."
GPT_2 = "<think> Check the river. </think>\n<search> river of Paris </search>"
INFO_2 = "Doc 1(Title: Seine) The Seine flows through Paris."
GPT_3 = "<think> Paris. </think>\n<answer> Paris </answer>"
OBS_1 = f"\n<information>\n{INFO_1}\n</information>\n"
OBS_2 = f"\n<information>\n{INFO_2}\n</information>\n"
RESPONSE = GPT_1 + OBS_1 + GPT_2 + OBS_2 + GPT_3


def row(em: float, **extra) -> dict:
    return {"question": "Which city is the capital of France?", "prompt": PROMPT, "text": RESPONSE,
            "golden_answers": ["Paris"], "em": em, **extra}


def test_split_response_gives_the_agent_layout_verbatim():
    turns = split_response(RESPONSE)
    assert turns == [{"from": "gpt", "value": GPT_1}, {"from": "observation", "value": OBS_1},
                     {"from": "gpt", "value": GPT_2}, {"from": "observation", "value": OBS_2},
                     {"from": "gpt", "value": GPT_3}]
    assert "".join(t["value"] for t in turns) == RESPONSE


def test_rejection_sampling_keeps_only_em_1_and_drops_forged_information():
    forged = row(1.0, text=GPT_1 + "<information> made up </information>" + GPT_3)
    corrected = row(1.0, text="<think> hmm </think>" + invalid_action_note("multi") + GPT_3)
    rows = [row(1.0), row(0.0), row(0.5), row(1.0, searches=2), row(1.0, searches=1), forged, corrected]
    samples, stats = build(rows)
    assert stats == {"rows": 7, "kept": 2, "rejected_em": 2, "malformed": 3}
    assert samples == [{"conversations": [{"from": "human", "value": PROMPT}] + split_response(RESPONSE)}] * 2
    with pytest.raises(KeyError, match="no 'score'"):
        build([row(1.0)], em_key="score")


def test_prompt_from_chat_messages_or_the_agent_prompt_of_the_question():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": PROMPT}]
    [sample], _ = build([row(1.0, prompt=messages)])
    assert sample["system"] == "S" and sample["conversations"][0]["value"] == PROMPT
    bare = row(1.0)
    del bare["prompt"]
    [sample], _ = build([bare], mode="single")
    assert sample["conversations"][0]["value"] == user_content("Which city is the capital of France?", "single")
    del bare["question"]
    with pytest.raises(KeyError, match="neither 'prompt' nor 'question'"):
        build([bare])


def test_cut_trajectory_outputs_are_the_model_steps_and_never_hold_retrieved_text():
    [conversation], _ = build([row(1.0)])
    pairs = cut_trajectory(conversation)
    assert pairs == [(PROMPT, GPT_1), (PROMPT + GPT_1 + OBS_1, GPT_2), (PROMPT + GPT_1 + OBS_1 + GPT_2 + OBS_2, GPT_3)]
    for _, output in pairs:
        assert INFO_1 not in output and INFO_2 not in output and "information>" not in output


def test_cut_samples_train_only_on_the_step_output(tiny_model_dir):
    from transformers import AutoTokenizer

    from verl.utils.dataset.sft_dataset import parse_row, tokenize_conversation

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    [conversation], _ = build([row(1.0)])
    samples = cut_conversations(conversation)
    assert [s["conversations"][-1]["value"] for s in samples] == [GPT_1, GPT_2, GPT_3]
    for sample in samples:
        tokens = tokenize_conversation(parse_row(sample), tokenizer, max_length=4096)
        trained = tokenizer.decode(tokens["input_ids"][tokens["loss_mask"].bool()])
        assert trained == sample["conversations"][-1]["value"] + tokenizer.eos_token
        assert INFO_1 not in trained and INFO_2 not in trained


def test_cli_writes_sharegpt_and_a_dataset_info_entry(tmp_path, capsys):
    rollouts = tmp_path / "trajectories.jsonl"
    rollouts.write_text("\n".join(json.dumps(r) for r in [row(1.0), row(0.0)]) + "\n")
    main([str(rollouts), "--out", str(tmp_path / "sft" / "agent.json"), "--cut"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == 3
    assert len(json.loads((tmp_path / "sft" / "agent.json").read_text())) == 3
    assert json.loads((tmp_path / "sft" / "dataset_info.json").read_text())["agent"]["formatting"] == "sharegpt"
