"""RL questions at the model's frontier: sample the model n times per question, keep the questions it
answers right sometimes but not always.

    python -m rag_r1.eval.frontier --model PATH --questions train.jsonl --retrieval-url URL \\
        --mode multi --n 4 --out DIR [--temperature 1.0] [--batch-size 16] [--seed 0]

A question the model always gets right, or never does, gives a group-relative advantage of zero to
every sample (GRPO) and almost no signal to PPO; at the frontier every group carries some. Writes
`DIR/samples.jsonl` (per question: the EM of each sample; appended batch by batch, so a rerun
continues), `DIR/train.jsonl` (the frontier questions, in the input's format; with --keep-never also
the never-solved ones) and `DIR/counts.json` (how many questions were always, sometimes and never
answered right, and how many were kept).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from rag_r1.eval.agent import add_agent_arguments
from rag_r1.eval.metrics import answer_scores
from rag_r1.eval.runner import TrajectoryWriter, load_questions


def frontier_counts(hits: dict[str, list[float]]) -> dict[str, int]:
    """How many questions were answered right by every sample, by some, by none.

    >>> frontier_counts({"a": [1, 1], "b": [0, 1], "c": [0, 0], "d": [1, 0]})
    {'questions': 4, 'always': 1, 'sometimes': 2, 'never': 1}
    """
    always = sum(all(h) for h in hits.values())
    never = sum(not any(h) for h in hits.values())
    return {"questions": len(hits), "always": always, "sometimes": len(hits) - always - never, "never": never}


def is_frontier(hits: list[float], keep_never: bool = False) -> bool:
    """Right sometimes; or never, too, when `keep_never` (guide trajectories give such a group the
    success its own samples lack)."""
    return not all(hits) and (keep_never or any(hits))


def sample_hits(questions: list[dict], solve, n: int, writer: TrajectoryWriter, batch_size: int) -> None:
    """EM of n sampled answers per question not yet in `writer`, written a batch of questions at a time."""
    todo = [q for q in questions if q["id"] not in writer.rows]
    per_batch = max(1, batch_size // n)
    with tqdm(total=len(questions), initial=len(questions) - len(todo), desc="frontier", unit="q") as bar:
        for start in range(0, len(todo), per_batch):
            batch = todo[start:start + per_batch]
            outputs = solve([q for q in batch for _ in range(n)])
            rows = []
            for i, question in enumerate(batch):
                answers = [out["answer"] for out in outputs[i * n:(i + 1) * n]]
                rows.append({"id": question["id"],
                             "em": [answer_scores(a, question["golden_answers"])["em"] for a in answers]})
            writer.write(rows)
            bar.update(len(batch))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rag_r1.eval.frontier", description=__doc__.split("\n")[0])
    add_agent_arguments(parser)
    parser.add_argument("--n", type=int, default=4, help="samples per question")
    parser.add_argument("--keep-never", action="store_true",
                        help="also keep the questions no sample answered (for RL with guide trajectories)")
    parser.set_defaults(sample=True, batch_size=16)
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error(f"--n must be >= 2 to tell sometimes from always, got {args.n}")
    return args


def main(argv: list[str] | None = None) -> dict[str, int]:
    from rag_r1.eval.agent import build_solver

    args = parse_args(argv)
    questions = load_questions(args.questions, args.limit)
    source = {row["id"]: line for row, line in zip(questions, _lines(args.questions, args.limit))}
    writer = TrajectoryWriter(args.out / "samples.jsonl")
    try:
        sample_hits(questions, build_solver(args), args.n, writer, args.batch_size)
        hits = {q["id"]: writer.rows[q["id"]]["em"] for q in questions}
    finally:
        writer.close()
    kept = [q for q in hits if is_frontier(hits[q], args.keep_never)]
    counts = {**frontier_counts(hits), "n": args.n, "kept": len(kept)}
    (args.out / "train.jsonl").write_text("".join(source[q] + "\n" for q in kept), encoding="utf-8")
    (args.out / "counts.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(counts))
    return counts


def _lines(path: Path, limit: int | None) -> list[str]:
    if path.suffix != ".jsonl":
        raise SystemExit(f"--questions: the frontier writes JSONL back, so it reads JSONL; got {path}")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:limit]


if __name__ == "__main__":
    main()
