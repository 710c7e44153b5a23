"""Evaluation sets in FlashRAG's JSONL (`id`, `question`, `golden_answers`[, `supporting_ids`]) -> parquet.

    python -m scripts.data_process.qa_eval_sets --input-dir ../shared/data/qa7 --out data/qa7 --mode multi
    python -m scripts.data_process.qa_eval_sets --input-dir ../shared/data/hotpotqa_closed \
        --sets train test --data-source hotpotqa_closed --out data/hotpotqa_closed

Writes `<out>/<set>.parquet` per set (data_source = the set's name unless `--data-source`), in the
schema of the RL data, with `id` and `supporting_ids` (when present) kept in `extra_info`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rag_r1.eval.report import read_jsonl
from rag_r1.llm_agent.config import MODES, AgentConfig
from scripts.data_process.search_data import (AliasHelpFormatter, add_query_arguments, convert_questions,
                                               prompt_mode, write_parquet)

SEVEN_SETS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=AliasHelpFormatter)
    p.add_argument("--input-dir", "--input_dir", required=True, type=Path, help="holds <set>.jsonl for every set")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--sets", nargs="+", default=list(SEVEN_SETS))
    p.add_argument("--mode", choices=MODES, default=AgentConfig.mode,
                   help="instruction of the prompt (default %(default)s, as agent.mode)")
    p.add_argument("--data-source", "--data_source", default=None,
                   help="one data_source for every set (default: set name)")
    p.add_argument("--split", default="test", help="extra_info.split of the rows")
    add_query_arguments(p)
    return p


def main(argv: list[str] | None = None) -> dict[str, int]:
    args = build_parser().parse_args(argv)
    missing = [s for s in args.sets if not (args.input_dir / f"{s}.jsonl").is_file()]
    if missing:
        raise SystemExit(f"qa_eval_sets: no {', '.join(f'{s}.jsonl' for s in missing)} in {args.input_dir}")
    counts = {}
    mode = prompt_mode(args.mode, args)
    for name in args.sets:
        rows = convert_questions(read_jsonl(args.input_dir / f"{name}.jsonl"), args.data_source or name, mode,
                                 args.split)
        counts[name] = write_parquet(rows, args.out / f"{name}.parquet")
        print(f"{args.out / f'{name}.parquet'}: {counts[name]} rows")
    return counts


if __name__ == "__main__":
    main()
