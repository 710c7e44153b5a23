"""`make bench-learning`: does RL learn? GRPO on a fixed set of train questions, revisited every step.

    make bench-learning                                   # 8 demo questions, 24 steps
    make bench-learning ARGS="--questions 16 --steps 30"
    make bench-learning ARGS="--set actor_rollout_ref.actor.optim.lr=1e-4"   # any trainer key

The demo's SFT model (outputs/demo/checkpoints/sft, built with the demo's own stages when missing)
is trained with the RL settings of the demo profile (configs/recipe/demo.yaml) on the same questions
every step, without guides (no gold trajectory in the groups: whatever is learnt, the policy found
itself), with the demo's multi-turn search agent and retrieval server. The trainer's greedy validation on the same
questions before the first step and after the last gives the exact match before and after.

The questions are those of a seeded draw of candidates that the SFT model answers right sometimes but
not always when it samples each one --frontier times as RL samples (the recipe's frontier): a question
it always or never answers gives every sample of its group the same reward, hence no gradient, so a
set drawn blind spends most of its samples on questions nothing can be learnt from. When fewer
candidates are at the frontier than --questions, the others fill the set; --frontier 0 takes the
draw as it is.

Because every step samples the same questions, the reward of the first quarter of the steps and
of the last quarter compare like with like; their standard error is that of the difference of two
means of per-step rewards. The frontier's samples are not among them: they only choose the questions.
The last line printed (and written to OUT/summary.txt) is

    learning: reward first-quarter A last-quarter B (s.e. S) | greedy EM on the set before C after D | entropy E0 -> E1 | steps N in M min

and the run learns when B - A > 2 S and D > C; M is the training run's time, the frontier's is in
summary.json. OUT (default outputs/bench_learning/) holds the candidates, the frontier's samples, the
questions, the trainer's metrics.jsonl and summary.json.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

from rag_r1.eval.report import read_jsonl
from recipe.config import REPO, load_settings
from recipe.pipeline import Pipeline
from recipe.samples import evenly_by_type, write_if_changed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--questions", type=int, default=8, help="train questions revisited every step")
    p.add_argument("--steps", type=int, default=24, help="a quarter of them is compared with the last")
    p.add_argument("--frontier", type=int, default=4, metavar="N",
                   help="samples of each candidate that pick the questions at the SFT model's frontier; 0 = no frontier")
    p.add_argument("--candidates", type=int, default=24, help="train questions drawn for the frontier to choose from")
    p.add_argument("--seed", type=int, default=0, help="draw of the candidates (of the questions without the frontier)")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_learning")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a trainer key (verl/trainer/config.py) over the recipe's; repeatable")
    return p.parse_args(argv)


def draw_questions(train: Path, count: int, seed: int, out: Path) -> Path:
    """`count` train questions, as many of each type as there are, in a seeded draw."""
    rows = train.read_text(encoding="utf-8").splitlines()
    kinds = [json.loads(row).get("type") for row in rows]
    picked = evenly_by_type(kinds, count, random.Random(f"bench-learning:{seed}"), train)
    return write_if_changed(out / "train.jsonl", "".join(rows[i] + "\n" for i in picked))


def frontier_first(candidates: Path, frontier: Path, count: int, seed: int, out: Path) -> tuple[Path, int]:
    """`count` of the `candidates` rows: those in `frontier` (the frontier's kept questions) first, as many
    of each type as there are, then, when too few are, the others likewise. The file and how many of its
    questions are at the frontier."""
    rows = candidates.read_text(encoding="utf-8").splitlines()
    parsed = [json.loads(row) for row in rows]
    kept = {json.loads(row)["id"] for row in frontier.read_text(encoding="utf-8").splitlines()}
    kinds = [row.get("type") for row in parsed]
    rng = random.Random(f"bench-learning-frontier:{seed}")

    def take(indices: list[int], k: int) -> list[int]:
        if k >= len(indices):
            return indices
        return [indices[j] for j in evenly_by_type([kinds[i] for i in indices], k, rng, candidates)]

    at_frontier = take([i for i, row in enumerate(parsed) if row["id"] in kept], count)
    others = take([i for i, row in enumerate(parsed) if row["id"] not in kept], count - len(at_frontier))
    text = "".join(rows[i] + "\n" for i in sorted(at_frontier + others))
    return write_if_changed(out / "train.jsonl", text), len(at_frontier)


def with_overrides(base: list[str], changes: list[str]) -> list[str]:
    """`base` with every key that `changes` sets replaced (Hydra refuses a key given twice)."""
    keys = {change.split("=", 1)[0].lstrip("+") for change in changes}
    return [o for o in base if o.split("=", 1)[0].lstrip("+") not in keys] + changes


def bench_overrides(questions: int, steps: int, run_dir: Path, rl_data: Path) -> list[str]:
    """What the benchmark changes in the recipe's RL stage: every question in every step, in one optimizer
    step as the recipe takes one a step, greedy validation on the same questions before and after, no
    guides, no checkpoints."""
    return [f"data.train_batch_size={questions}", f"actor_rollout_ref.actor.ppo_mini_batch_size={questions}",
            f"data.val_files={rl_data / 'train.parquet'}",
            f"trainer.total_training_steps={steps}", f"trainer.test_freq={steps}", "trainer.val_before_train=true",
            "trainer.save_freq=-1", "trainer.resume_mode=disable", f"trainer.default_local_dir={run_dir}",
            "algorithm.filter_groups.enable=false"]


def quarter_means(values: list[float]) -> tuple[float, float, float]:
    """(mean of the first quarter, mean of the last quarter, standard error of their difference) of
    per-step values; a quarter holds at least one step."""
    k = max(1, len(values) // 4)
    first, last = values[:k], values[-k:]

    def var(xs: list[float]) -> float:
        if len(xs) < 2:
            return 0.0
        mean = sum(xs) / len(xs)
        return sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)

    se = math.sqrt(var(first) / len(first) + var(last) / len(last))
    return sum(first) / k, sum(last) / k, se


def summarize(metrics: list[dict], seconds: float) -> dict:
    """The benchmark's numbers from the trainer's metrics.jsonl rows."""
    steps = [row for row in metrics if "sampling/score_mean" in row]
    vals = [row for row in metrics if "val/reward/em" in row]
    if not steps or len(vals) < 2:
        raise SystemExit("bench-learning: the run logged no training step or lacks the validation before and after")
    first, last, se = quarter_means([row["sampling/score_mean"] for row in steps])
    entropy = [row["actor/entropy"] for row in steps if "actor/entropy" in row]
    return {"reward_first_quarter": first, "reward_last_quarter": last, "reward_se": se,
            "em_before": vals[0]["val/reward/em"], "em_after": vals[-1]["val/reward/em"],
            "entropy_first": entropy[0], "entropy_last": entropy[-1], "steps": len(steps),
            "minutes": seconds / 60, "learns": last - first > 2 * se and vals[-1]["val/reward/em"] > vals[0]["val/reward/em"]}


def summary_line(s: dict) -> str:
    return (f"learning: reward first-quarter {s['reward_first_quarter']:.3f} last-quarter {s['reward_last_quarter']:.3f} "
            f"(s.e. {s['reward_se']:.3f}) | greedy EM on the set before {s['em_before']:.3f} after {s['em_after']:.3f} | "
            f"entropy {s['entropy_first']:.3f} -> {s['entropy_last']:.3f} | steps {s['steps']} in {s['minutes']:.1f} min")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    demo = Pipeline(load_settings(["demo"]))  # the demo's stages and outputs: its SFT model is the demo's
    # the benchmark's own files and commands; no guides, so the frontier keeps no never-answered question
    bench = Pipeline(load_settings(["demo"], [f"recipe.out_dir={args.out}", f"recipe.frontier_n={args.frontier}",
                                              "recipe.guides=false"]))
    run_dir = args.out / "run"
    base = demo.base_model()
    train = demo.cfg.data_dir / "train.jsonl"
    with demo.retrieval_server(demo.build_index()) as url:
        sft = demo.run_sft(base, [demo.build_sft_data(url, mode) for mode in ("multi", "single")])
        started = time.time()
        if args.frontier:
            candidates = draw_questions(train, args.candidates, args.seed, args.out / "candidates")
            questions, at_frontier = frontier_first(candidates, bench.frontier(sft, url, candidates), args.questions,
                                                    args.seed, args.out / "questions")
            print(f"bench-learning: {at_frontier} of {args.questions} questions at the SFT model's frontier "
                  f"({args.candidates} candidates, {args.frontier} samples each)", flush=True)
        else:
            questions, at_frontier = draw_questions(train, args.questions, args.seed, args.out / "questions"), None
        frontier_seconds = time.time() - started
        rl_data = bench.build_rl_data(questions)
        overrides = with_overrides(bench.rl_overrides(sft, rl_data, url, run_dir),
                                   bench_overrides(args.questions, args.steps, run_dir, rl_data) + args.overrides)
        started = time.time()
        bench.sh("learning benchmark", ["-m", "verl.trainer.main_ppo", *overrides])
        seconds = time.time() - started
    summary = summarize(read_jsonl(run_dir / "metrics.jsonl"), seconds)
    summary.update(overrides=args.overrides, questions_at_frontier=at_frontier, frontier_samples=args.frontier,
                   frontier_minutes=frontier_seconds / 60)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    line = summary_line(summary)
    (args.out / "summary.txt").write_text(line + "\n")
    print(line, flush=True)
    return summary


if __name__ == "__main__":
    main()
