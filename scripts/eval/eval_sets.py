"""Evaluate one checkpoint on several question sets in single and/or multi mode, then tabulate.

    python -m scripts.eval.eval_sets --model PATH --retrieval-url http://127.0.0.1:8000/retrieve \\
        --data-dir ../shared/data/qa7 --sets nq hotpotqa bamboogle --modes single multi \\
        --out results/eval/base [--limit 50] [other `python -m rag_r1.eval` options, e.g. --batch-size 4]

Each run lands in `OUT/<mode>/<set>/` (resumable, as `python -m rag_r1.eval`), and the table of
all of them in `OUT/report.md` + `OUT/report.png`. A set is `DATA_DIR/<set>.jsonl` (or `.parquet`);
the seven of the paper are the default.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rag_r1.eval.__main__ import parse_args as parse_eval_args
from rag_r1.eval.__main__ import run
from rag_r1.eval.report import load_runs, markdown_report, write_report

SEVEN_SETS = ["nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle"]


def question_file(data_dir: Path, name: str) -> Path:
    for suffix in (".jsonl", ".parquet"):
        if (data_dir / f"{name}{suffix}").is_file():
            return data_dir / f"{name}{suffix}"
    raise SystemExit(f"no {name}.jsonl or {name}.parquet in {data_dir}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--retrieval-url", required=True, nargs="+")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of <set>.jsonl files")
    parser.add_argument("--sets", nargs="+", default=SEVEN_SETS)
    parser.add_argument("--modes", nargs="+", choices=["single", "multi"], default=["single", "multi"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="first N questions of each set")
    args, extra = parser.parse_known_args(argv)
    files = {name: question_file(args.data_dir, name) for name in args.sets}  # all missing sets fail up front
    for mode in args.modes:
        for name, path in files.items():
            print(f"== {mode} / {name}")
            eval_argv = ["--model", args.model, "--questions", str(path), "--retrieval-url", *args.retrieval_url,
                         "--mode", mode, "--out", str(args.out / mode / name), *extra]
            if args.limit is not None:
                eval_argv += ["--limit", str(args.limit)]
            run(parse_eval_args(eval_argv))
    runs = load_runs(args.out)
    md, png = write_report(runs, args.out)
    print(markdown_report(runs))
    print(f"wrote {md} and {png}")


if __name__ == "__main__":
    main()
