"""`make results`: SFT then RL on a real multi-hop closed corpus, evaluated before and after.

    make results                                   # ../shared/data/hotpotqa_closed (see docs/results.md)
    make results PROFILE=long                      # the default carried on to 24 RL steps (about 140 min on 2 cores)
    make results DATA=path/to/set                  # any closed_corpus.py output (corpus/train/test.jsonl)
    make results ARGS="--rl-steps 200 --rl-batch 64 --model Qwen/Qwen2.5-3B-Instruct"   # scale up

Outputs (git-ignored) under results/ (results-long/ for PROFILE=long): checkpoints/{base,sft,rl}/ (HF),
frontier/ (the RL questions), eval/<model>-<mode>/test/ (trajectories.jsonl, summary.json; dev/ beside it
for --dev-questions, which PROFILE=long sets to 50),
runs/{sft,rl}/ (metrics.jsonl), config.json (retrieval settings), commands.sh (every command run)
and README.md + PNGs. Re-running resumes.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from scripts.results.pipeline import REPO, Pipeline, PipelineConfig, invocation, parse_config

DEFAULTS = PipelineConfig(
    data_dir=REPO.parent / "shared" / "data" / "hotpotqa_closed",
    out_dir=REPO / "results",
    # The SFT model answers ~1 in 10 of these questions exactly, so under EM most samples of a group score
    # 0 alike and only the guide teaches; token F1 still ranks a near miss ("Brett Scallions" for "Brett
    # Allen Scallions") above a wrong entity, so the policy's own samples carry a signal.
    reward="f1",
    # Twice the pipeline's SFT questions (31 steps instead of 15, ~14 min more): SFT EM .12 -> .18 in multi
    # mode on the test questions, .18 -> .22 on dev, and RL starts from more successes of its own.
    sft_questions=128,
    # Groups of 8 over 2 questions a step: the pipeline's 16 trajectories a step, but a group of 4 holds
    # 3 own samples beside its guide, too few for a group baseline; on hotpotqa_closed such groups came
    # out all equal and were refilled at 5 of 10 steps (a second generation batch), groups of 8 at none of 17.
    rl_n=8,
    rl_batch=2,
    rl_mini_batch=1,
    # Learn only from samples better than their group (the guide, or an own sample that beat its
    # siblings): the policy's samples are near copies of its greedy answer (entropy ~0.1), so pushing
    # the wrong ones down moved greedy answers from one wrong answer to another (the earlier default
    # changed 43 of 97 test answers, 34 wrong -> wrong). From the same SFT model on the same 50 dev
    # questions: RL .300 (6 gained / 2 lost) -> .320 (5 / 0); docs/results.md.
    rl_negative_scale=0.0,
)
# Each profile: the pipeline's defaults with these changes (flags given with ARGS still win).
PROFILES = {
    "default": DEFAULTS,
    # The default run carried on to 24 steps (48 of its 64 questions, no question seen twice): the same
    # sample and dev questions as the default, so `--out-dir results` with PROFILE=long resumes a finished
    # default run at its step 10. With room in its budget for the dev comparison (~10 min).
    "long": replace(DEFAULTS, out_dir=REPO / "results-long", rl_steps=24, dev_questions=50),
}


def main(argv: list[str] | None = None) -> None:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--profile", choices=sorted(PROFILES), default="default")
    known, rest = pre.parse_known_args(argv)
    config = parse_config(PROFILES[known.profile], rest, __doc__.splitlines()[0])
    if not Path(config.data_dir).is_dir():
        raise SystemExit(f"data not found: {config.data_dir} (set DATA=path or --data-dir)")
    Pipeline(config).run(invocation("scripts.results.make_results", argv))


if __name__ == "__main__":
    main()
