"""`make demo`: the whole recipe on the embedded demo world, on CPU, in about half an hour.

    make demo                       # data/demo, SmolLM2-135M-Instruct, MiniLM + FAISS Flat
    make demo ARGS="--ppo-steps 2"  # any scripts/results/pipeline.py flag

Converts SmolLM2-135M-Instruct from the pip-shipped GGUF (cached), indexes data/demo/corpus.jsonl,
starts the retrieval server, builds SFT trajectories from the questions' evidence, runs a short SFT
warm-up and a few multi-query PPO steps, evaluates the untrained, SFT and SFT+PPO models on the
held-out demo questions, stops the server and prints where the report is (outputs/demo/README.md).
"""
from __future__ import annotations

from scripts.results.pipeline import REPO, Pipeline, PipelineConfig, invocation, parse_config

DEFAULTS = PipelineConfig(
    data_dir=REPO / "data" / "demo",
    out_dir=REPO / "outputs" / "demo",
    sft_questions=32,
    sft_epochs=2,
    sft_batch=8,
    sft_lr=1e-4,
    sft_max_length=1024,
    ppo_steps=2,
    ppo_batch=4,
    ppo_lr=5e-6,  # a few CPU steps: larger than the paper's 1e-6 so they move the policy at all
    ppo_max_turns=2,
    ppo_response_length=64,
    max_obs_length=256,
    eval_models=("base", "sft", "ppo"),
    eval_modes=("multi",),
    eval_limit=16,
    eval_max_turns=3,
    eval_max_new_tokens=64,
    eval_batch_size=16,
)


def main(argv: list[str] | None = None) -> None:
    Pipeline(parse_config(DEFAULTS, argv, __doc__.splitlines()[0])).run(invocation("scripts.quickstart.demo", argv))


if __name__ == "__main__":
    main()
