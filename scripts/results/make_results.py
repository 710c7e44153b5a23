"""`make results`: SFT then PPO on a real multi-hop closed corpus, evaluated before and after.

    make results                                   # ../shared/data/hotpotqa_closed (see docs/results.md)
    make results DATA=path/to/set                  # any closed_corpus.py output (corpus/train/test.jsonl)
    make results ARGS="--ppo-steps 200 --ppo-batch 256 --model Qwen/Qwen2.5-3B-Instruct"   # scale up

Outputs (git-ignored) under results/: checkpoints/{base,sft,ppo}/ (HF), eval/<model>-<mode>/test/
(trajectories.jsonl, summary.json), runs/{sft,ppo}/ (metrics.jsonl), config.json (retrieval
settings), commands.sh (every command run) and README.md + PNGs. Re-running resumes.
"""
from __future__ import annotations

from pathlib import Path

from scripts.results.pipeline import REPO, Pipeline, PipelineConfig, invocation, parse_config

DEFAULTS = PipelineConfig(
    data_dir=REPO.parent / "shared" / "data" / "hotpotqa_closed",
    out_dir=REPO / "results",
)


def main(argv: list[str] | None = None) -> None:
    config = parse_config(DEFAULTS, argv, __doc__.splitlines()[0])
    if not Path(config.data_dir).is_dir():
        raise SystemExit(f"data not found: {config.data_dir} (set DATA=path or --data-dir)")
    Pipeline(config).run(invocation("scripts.results.make_results", argv))


if __name__ == "__main__":
    main()
