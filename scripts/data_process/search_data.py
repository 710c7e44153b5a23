"""Shared by the RL and evaluation data scripts: question rows -> veRL's parquet schema.

A row is `{"data_source", "prompt": [{"role": "user", "content": instruction + question}],
"ability", "reward_model": {"style": "rule", "ground_truth": {"target": [answers]}}, "extra_info":
{"split", "index", "question", ...}}`; the instruction is the chosen mode's (rag_r1.llm_agent.modes),
which must be the one the RL run's `agent.*` asks for (the agent loop checks it).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.modes import AgentMode, build_mode


class AliasHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that names an option's value once after all its spellings: `--input-dir, --input_dir
    INPUT_DIR`. The data scripts take dashed flags and still accept the underscore spelling that
    earlier commands used; argparse before Python 3.13 would repeat the value after each spelling."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if len(action.option_strings) < 2 or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"


def add_query_arguments(parser: argparse.ArgumentParser) -> None:
    """--max-queries and --query-delimiter: the multi-mode instruction states them (as agent.*)."""
    parser.add_argument("--max-queries", "--max_queries", type=int, default=AgentConfig.max_queries,
                        help="multi mode: queries per search the instruction allows, as agent.max_queries "
                             "(default %(default)s)")
    parser.add_argument("--query-delimiter", "--query_delimiter", default=AgentConfig.query_delimiter,
                        help="multi mode: query separator, as agent.query_delimiter (default %(default)r)")


def prompt_mode(name: str, args: argparse.Namespace) -> AgentMode:
    """The mode `name` with the query settings of `add_query_arguments`."""
    return build_mode(name, args.max_queries, args.query_delimiter)


def make_row(question: str, golden_answers: str | list[str], data_source: str, mode: AgentMode, split: str,
             index: int, extra: dict | None = None) -> dict:
    answers = [golden_answers] if isinstance(golden_answers, str) else [str(a) for a in golden_answers]
    if not answers:
        raise ValueError(f"{data_source} {split} row {index} has no golden answer: {question!r}")
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": mode.user_content(question)}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
        "extra_info": {"split": split, "index": index, "question": question.strip(), **(extra or {})},
    }


def read_json_list(path: Path) -> list[dict]:
    """A JSON list of `{"question", "golden_answers"}` (the RAG-R1 RL release's layout)."""
    rows = json.loads(Path(path).read_text())
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of question objects")
    return rows


def write_parquet(rows: Iterable[dict], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(list(rows))
    frame.to_parquet(path, index=False)
    return len(frame)


def convert_questions(items: list[dict], data_source: str, mode: AgentMode, split: str,
                      keep: tuple[str, ...] = ("id", "supporting_ids")) -> list[dict]:
    """Rows of `items`; the keys in `keep` that an item has go to extra_info."""
    rows = []
    for i, item in enumerate(items):
        for key in ("question", "golden_answers"):
            if key not in item:
                raise KeyError(f"{data_source} {split} item {i} has no {key!r}: {item}")
        extra = {k: item[k] for k in keep if k in item}
        rows.append(make_row(item["question"], item["golden_answers"], data_source, mode, split, i, extra))
    return rows
