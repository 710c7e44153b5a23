"""Evaluate a checkpoint on a question set with the search agent; resumable.

    python -m rag_r1.eval --model PATH --questions FILE --retrieval-url URL --mode single|multi \\
        [--limit N] --out DIR [--batch-size N] [--max-turns N] [--max-new-tokens N] [--topk K] \\
        [--max-prompt-length N] [--max-start-length N] [--sample --temperature T --top-p P] [--seed S]

Writes `DIR/trajectories.jsonl` (one row per question), `DIR/summary.json` (EM, F1, rounds,
queries per round, tokens, seconds per question, and evidence recall when the questions carry
`supporting_ids`) and `DIR/config.json` (these settings). Running again into the same DIR
continues where it stopped, question by question: a larger sample of the same set (another --limit or
questions file) solves only the new questions, and the summary covers the questions asked this time;
trajectories.jsonl then holds just those (a smaller sample moves the other rows to
trajectories.set_aside.jsonl, and a later, larger one takes them back).
DIR refuses settings other than the ones it was started with, and rows whose id names another question.
Defaults (`--help`) follow the paper's evaluation: its retrieval rounds (EVAL_MAX_TURNS in
rag_r1/eval/agent.py), 1024 new tokens, the agent's topk and observation cap (AgentConfig), greedy
decoding.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rag_r1.eval.agent import add_agent_arguments
from rag_r1.eval.runner import evaluate, load_questions

# Settings that change what a trajectory is; a resumed run must use the same ones. The questions file is
# not one: rows are reused question by question (rag_r1.eval.runner.evaluate), so a larger or smaller
# sample of the same set resumes.
TRAJECTORY_SETTINGS = ("model", "mode", "max_turns", "max_new_tokens", "topk", "max_prompt_length",
                       "max_start_length", "max_obs_length", "sample", "temperature", "top_p", "seed",
                       "unseen_passages")
# settings added after evaluations were written: a config.json without one was run at this value
ADDED_LATER = {"unseen_passages": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rag_r1.eval", description=__doc__.split("\n")[0])
    add_agent_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_turns", "max_new_tokens", "topk", "max_prompt_length", "max_start_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if not args.sample and (args.temperature != 1.0 or args.top_p != 1.0):
        parser.error("--temperature/--top-p only apply with --sample (decoding is greedy by default)")
    return args


def settings_of(args: argparse.Namespace) -> dict:
    """The run's settings as config.json records them (paths resolved)."""
    return {k: str(v.resolve()) if isinstance(v, Path) else v for k, v in vars(args).items()}


def changed_settings(out: Path, settings: dict, ignore: tuple[str, ...] = ()) -> dict:
    """The trajectory settings `out/config.json` records other than `settings`, as {key: (before, now)};
    {} when it records none other or does not exist."""
    path = out / "config.json"
    if not path.exists():
        return {}
    before = {**ADDED_LATER, **json.loads(path.read_text())}
    return {k: (before.get(k), settings[k]) for k in TRAJECTORY_SETTINGS
            if k not in ignore and before.get(k) != settings[k]}


def check_resume(out: Path, settings: dict) -> None:
    """Write `out/config.json`, or refuse when it records other trajectory settings."""
    changed = changed_settings(out, settings)
    if changed:
        raise SystemExit(f"{out} holds a run with other settings {changed} (before, now); "
                         f"use another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(settings, indent=2) + "\n")


def run(args: argparse.Namespace) -> dict:
    """Evaluate as `args` say; return the summary."""
    from rag_r1.eval.agent import build_solver

    questions = load_questions(args.questions, args.limit)
    check_resume(args.out, settings_of(args))
    solve = build_solver(args)
    summary = evaluate(questions, solve, args.out, args.batch_size)
    return summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    summary = run(args)
    json.dump(summary, sys.stdout, indent=2)
    print(f"\nwrote {args.out / 'trajectories.jsonl'} and {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
