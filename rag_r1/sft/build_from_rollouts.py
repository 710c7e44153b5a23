"""SFT trajectories from the search agent's own successful rollouts (rejection sampling by EM).

    python -m rag_r1.sft.build_from_rollouts results/eval/hotpotqa/trajectories.jsonl --mode multi --out data/sft/agent.json
    python -m rag_r1.sft.build_from_rollouts ROLLOUTS.jsonl --out cut.json --cut   # one sample per step

Input rows are `rag_r1.eval.runner`'s `trajectories.jsonl` (or any JSONL with the same keys): the
full assistant text of the trajectory (`text`: retrieved blocks included, no eos), its exact match
(`em`), its search count (`searches`, optional) and the user prompt: `prompt` (a string or chat
messages) when the row has one, else `rag_r1.llm_agent.prompts.user_content(question, --mode)`, the
prompt the agent was given. Rows with EM = 1 become sharegpt conversations in the agent layout of
docs/architecture.md: human (prompt), then gpt and observation turns, where every observation is one
`"\\n<information>\\n...\\n</information>\\n"` block exactly as the agent inserted it, so the SFT
trainer masks retrieved text and learns only the model's own tokens. Trajectories in which the agent
had to insert a corrective note (an invalid action) are dropped as malformed.

`--cut` writes instead one sample per reasoning/retrieval step (RAG-R1's cut trajectories):
question -> think+search, question+history -> think+search or think+answer. The history is kept in
the assistant continuation as a loss-free observation turn, so the model sees it exactly where it
sees it at inference, and the output (the only trained text) never contains retrieved text.
A `dataset_info.json` entry is written next to `--out` so LLaMA-Factory can read the file too.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from rag_r1.llm_agent.config import MODES, AgentConfig
from rag_r1.llm_agent.generation import INFO_CLOSE, INFO_OPEN
from rag_r1.llm_agent.prompts import agent_notes, user_content

# The agent inserts exactly INFO_OPEN + formatted + INFO_CLOSE after a </search>.
OBSERVATION_RE = re.compile(re.escape(INFO_OPEN) + ".*?" + re.escape(INFO_CLOSE), re.DOTALL)
INFO_TAGS = ("<information>", "</information>")
# Text the agent (not the model) writes outside information blocks.
AGENT_NOTES = tuple(note for mode in MODES for note in agent_notes(mode))


def split_response(response: str) -> list[dict[str, str]]:
    """The assistant text as sharegpt turns: gpt (the model's words) and observation (retrieved blocks).

    >>> [t["from"] for t in split_response("<search> q </search>\\n<information>\\nD\\n</information>\\n<answer> a </answer>")]
    ['gpt', 'observation', 'gpt']
    """
    turns, start = [], 0
    for match in OBSERVATION_RE.finditer(response):
        if match.start() > start:
            turns.append({"from": "gpt", "value": response[start:match.start()]})
        turns.append({"from": "observation", "value": match.group(0)})
        start = match.end()
    if start < len(response):
        turns.append({"from": "gpt", "value": response[start:]})
    return turns


def is_success(row: dict[str, Any], em_key: str = "em") -> bool:
    """Rejection sampling's test: the trajectory's exact match is 1."""
    if em_key not in row:
        raise KeyError(f"rollout row has no '{em_key}' (keys: {sorted(row)}); pass --em-key")
    return float(row[em_key]) >= 1.0


def user_prompt(row: dict[str, Any], prompt_key: str = "prompt", mode: str = AgentConfig.mode) -> tuple[str, str | None]:
    """(human value, system prompt or None) of a row: its prompt text or chat messages, else the
    agent's user message for `question` in `mode`."""
    prompt = row.get(prompt_key)
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, list):  # veRL-style chat messages
        system = next((m["content"] for m in prompt if m["role"] == "system"), None)
        users = [m["content"] for m in prompt if m["role"] == "user"]
        if len(users) != 1:
            raise ValueError(f"'{prompt_key}' holds {len(users)} user messages; expected one")
        return users[0], system
    if "question" in row:
        return user_content(row["question"], mode), None
    raise KeyError(f"rollout row has neither '{prompt_key}' nor 'question' (keys: {sorted(row)}); pass --prompt-key")


def to_conversation(row: dict[str, Any], prompt_key: str = "prompt", response_key: str = "text",
                    mode: str = AgentConfig.mode) -> dict[str, Any]:
    """One rollout row as a sharegpt conversation in the agent layout."""
    if response_key not in row:
        raise KeyError(f"rollout row has no '{response_key}' (keys: {sorted(row)}); pass --response-key")
    human, system = user_prompt(row, prompt_key, mode)
    conversation: dict[str, Any] = {"conversations": [{"from": "human", "value": human}]
                                    + split_response(row[response_key])}
    if system:
        conversation["system"] = system
    return conversation


def is_well_formed(conversation: dict[str, Any], searches: int | None = None) -> bool:
    """The model's turns hold no (half) information block and no corrective note of the agent, it
    ends by writing, and when the row counts its searches, there is one observation per search
    (else the model forged an information block)."""
    turns = conversation["conversations"][1:]
    model_turns = [t["value"] for t in turns if t["from"] == "gpt"]
    if not turns or turns[-1]["from"] != "gpt":
        return False
    if any(marker in v for v in model_turns for marker in INFO_TAGS + AGENT_NOTES):
        return False
    return searches is None or searches == sum(t["from"] == "observation" for t in turns)


def cut_trajectory(conversation: dict[str, Any]) -> list[tuple[str, str]]:
    """(input, output) at each reasoning or retrieval point: the output is one gpt turn, the input is the
    human value followed verbatim by every turn before it (history and retrieved blocks).

    >>> conv = {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "<search> s </search>"},
    ...         {"from": "observation", "value": "\\n<information>\\nD\\n</information>\\n"},
    ...         {"from": "gpt", "value": "<answer> a </answer>"}]}
    >>> cut_trajectory(conv)[1]
    ('Q?<search> s </search>\\n<information>\\nD\\n</information>\\n', '<answer> a </answer>')
    """
    turns = conversation["conversations"]
    if not turns or turns[0]["from"] != "human":
        raise ValueError("a trajectory starts with its human turn")
    pairs, history = [], ""
    for turn in turns[1:]:
        if turn["from"] == "gpt":
            if any(tag in turn["value"] for tag in INFO_TAGS):
                raise ValueError(f"a gpt turn holds retrieved text: {turn['value'][:80]!r}")
            pairs.append((turns[0]["value"] + history, turn["value"]))
        history += turn["value"]
    return pairs


def cut_conversations(conversation: dict[str, Any]) -> list[dict[str, Any]]:
    """cut_trajectory's pairs as sharegpt samples: human (question), observation (history, no loss), gpt."""
    question, samples = conversation["conversations"][0]["value"], []
    for model_input, output in cut_trajectory(conversation):
        history = model_input[len(question):]
        turns = [{"from": "human", "value": question}]
        turns += [{"from": "observation", "value": history}] if history else []
        sample = {"conversations": turns + [{"from": "gpt", "value": output}]}
        if conversation.get("system"):
            sample["system"] = conversation["system"]
        samples.append(sample)
    return samples


def build(rows: Iterable[dict[str, Any]], em_key: str = "em", prompt_key: str = "prompt",
          response_key: str = "text", mode: str = AgentConfig.mode, cut: bool = False,
          ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(sharegpt samples, counts of rows read / kept / rejected by EM / malformed)."""
    samples, stats = [], {"rows": 0, "kept": 0, "rejected_em": 0, "malformed": 0}
    for row in rows:
        stats["rows"] += 1
        if not is_success(row, em_key):
            stats["rejected_em"] += 1
            continue
        conversation = to_conversation(row, prompt_key, response_key, mode)
        if not is_well_formed(conversation, row.get("searches")):
            stats["malformed"] += 1
            continue
        stats["kept"] += 1
        samples += cut_conversations(conversation) if cut else [conversation]
    return samples, stats


def write_dataset(samples: list[dict[str, Any]], out: Path, name: str) -> None:
    """`out` as a JSON list, plus its entry in `out.parent/dataset_info.json` (other entries kept)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(samples, ensure_ascii=False, indent=1), encoding="utf-8")
    info_path = out.parent / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    info[name] = {"file_name": out.name, "formatting": "sharegpt",
                  "columns": {"messages": "conversations", "system": "system"}}
    info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rollouts", type=Path, nargs="+", help="JSONL file(s) of agent trajectories")
    parser.add_argument("--out", type=Path, required=True, help="sharegpt JSON list to write")
    parser.add_argument("--name", default=None, help="dataset_info.json entry name (default: --out's stem)")
    parser.add_argument("--cut", action="store_true", help="one sample per reasoning/retrieval step")
    parser.add_argument("--em-key", default="em")
    parser.add_argument("--prompt-key", default="prompt")
    parser.add_argument("--response-key", default="text")
    parser.add_argument("--mode", choices=MODES, default=AgentConfig.mode,
                        help="agent mode of the rollouts: picks the instruction for rows without a prompt "
                             "(default %(default)s, as agent.mode)")
    args = parser.parse_args(argv)

    def rows():
        for path in args.rollouts:
            with open(path, encoding="utf-8") as f:
                yield from (json.loads(line) for line in tqdm(f, desc=path.name) if line.strip())

    samples, stats = build(rows(), args.em_key, args.prompt_key, args.response_key, args.mode, args.cut)
    write_dataset(samples, args.out, args.name or args.out.stem)
    print(json.dumps({**stats, "samples": len(samples), "out": str(args.out)}))


if __name__ == "__main__":
    main()
