"""RAG-R1's HotpotQA RL split -> train/test parquet with the single-query instruction.

    python -m scripts.data_process.hotpotqa_search --input-dir ../shared/data/ragr1_rl/hotpotqa_train_filter \
        --out data/hotpotqa
    python -m scripts.data_process.hotpotqa_search_mq ...   # the same with the multi-query instruction

`--input-dir` holds `train_data.json` and `test_data.json` (JSON lists of `{"question",
"golden_answers"}`); `--out` gets `train.parquet` and `test.parquet` in veRL's schema.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from scripts.data_process.search_data import (AliasHelpFormatter, add_query_arguments, convert_questions,
                                               prompt_mode, read_json_list, write_parquet)

SPLITS = {"train": "train_data.json", "test": "test_data.json"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=AliasHelpFormatter)
    p.add_argument("--input-dir", "--input_dir", required=True, type=Path,
                   help="holds train_data.json and test_data.json")
    p.add_argument("--out", required=True, type=Path, help="directory for train.parquet / test.parquet")
    p.add_argument("--data-source", "--data_source", default="hotpotqa", help="data_source of every row")
    p.add_argument("--limit", type=int, default=None, help="keep the first N questions of each split")
    add_query_arguments(p)
    return p


def main(argv: list[str] | None = None, *, mode: str) -> dict[str, int]:
    """Both splits with the instruction of `mode` (this module: single; hotpotqa_search_mq: multi)."""
    args = build_parser().parse_args(argv)
    counts = {}
    for split, name in SPLITS.items():
        items = read_json_list(args.input_dir / name)[: args.limit]
        rows = convert_questions(items, args.data_source, prompt_mode(mode, args), split)
        counts[split] = write_parquet(rows, args.out / f"{split}.parquet")
        print(f"{args.out / f'{split}.parquet'}: {counts[split]} rows ({mode}-query prompt)")
    return counts


if __name__ == "__main__":
    main(mode="single")
