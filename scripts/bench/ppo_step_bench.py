"""Time one PPO (GAE) step with SmolLM2-135M-Instruct on CPU, phase by phase, and compare the
trainer's rollout tokens/s with bare `model.generate` on the same prompts.

    python -m scripts.bench.ppo_step_bench [--prompts 4] [--response-length 32] [--workers 1] [--out FILE]

Rollouts are greedy in both measurements, so both produce the same tokens and the ratio compares
like with like (the trainer's rollout runs on the worker's FSDP-wrapped actor behind Ray, and its
time includes the first call's set-up; bare generate is timed after a 2-token warm-up).
Prints one JSON object: `timing_s/<phase>`, `rollout_tokens_per_s`, `bare_generate_tokens_per_s`,
and `rollout_vs_bare_ratio` (< 1 means the trainer's rollout is slower).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
import torch

QUESTIONS = ["Who wrote the novel Dracula?", "What is the capital of Australia?",
             "When did the Berlin Wall fall?", "Which planet is the largest in the solar system?",
             "Who painted the Mona Lisa?", "What is the boiling point of water in Fahrenheit?",
             "Which element has the chemical symbol K?", "How many strings does a violin have?"]


def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """1.0 when the ground-truth answer appears in the response (the bench only needs a number)."""
    return float(ground_truth.lower() in solution_str.lower())


def write_prompts(path: Path, n: int) -> str:
    rows = [{"data_source": "bench", "prompt": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
             "ability": "qa", "reward_model": {"style": "rule", "ground_truth": "the"}, "extra_info": {"index": i}}
            for i in range(n)]
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def bench_config(model_dir: str, workdir: Path, prompts: int, response_length: int, workers: int):
    from verl.trainer.config import compose_config

    data = write_prompts(workdir / "prompts.parquet", prompts)
    return compose_config([
        f"data.train_files={data}", f"data.val_files={data}", f"data.train_batch_size={prompts}",
        "data.shuffle=false", "data.max_prompt_length=128", f"data.max_response_length={response_length}",
        f"actor_rollout_ref.model.path={model_dir}", "actor_rollout_ref.rollout.do_sample=false",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={prompts}", f"critic.ppo_mini_batch_size={prompts}",
        "algorithm.adv_estimator=gae", "trainer.total_training_steps=1", "trainer.val_before_train=false",
        "trainer.logger=[console]", f"trainer.n_gpus_per_node={workers}", "trainer.resume_mode=disable",
        f"trainer.default_local_dir={workdir / 'ckpt'}",
        f"custom_reward_function.path={Path(__file__).resolve()}", "custom_reward_function.name=compute_score",
    ])


def bare_generate_tokens_per_s(model_dir: str, prompts, max_new_tokens: int) -> tuple[float, int]:
    """tokens/s of plain HF generate (greedy) on the trainer's first batch of prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    input_ids, attention_mask = prompts.batch["input_ids"], prompts.batch["attention_mask"]

    def generate(new_tokens: int):
        with torch.no_grad():
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                                  do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id)

    generate(2)  # warm-up
    start = time.perf_counter()
    out = generate(max_new_tokens)
    seconds = time.perf_counter() - start
    generated = out[:, input_ids.shape[1]:]
    tokens = 0
    for row in generated.tolist():  # through the first eos, as the rollout counts them
        tokens += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
    return tokens / seconds, tokens


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the bare generate; Ray gives each worker OMP_NUM_THREADS=1")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from rag_r1.models.smollm2 import convert
    from verl.trainer.main_ppo import build_trainer, load_tokenizer
    from verl.utils.dataset import RLHFDataset, StatefulLoader

    model_dir = str(convert())
    workdir = Path(tempfile.mkdtemp(prefix="ppo_step_bench_"))
    config = bench_config(model_dir, workdir, args.prompts, args.response_length, args.workers)
    dataset = RLHFDataset(config.data.train_files, load_tokenizer(config), config.data)
    first_batch = next(iter(StatefulLoader(dataset, args.prompts, shuffle=False)))  # the trainer's step-1 batch
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    bare_tps, bare_tokens = bare_generate_tokens_per_s(model_dir, first_batch, args.response_length)
    torch.set_num_threads(threads)
    ray.init(num_cpus=max(2, args.workers * 2), include_dashboard=False, log_to_driver=False)
    try:
        (step,) = build_trainer(config).fit()
    finally:
        ray.shutdown()
    rollout_tokens = step["response_length/mean"] * args.prompts
    rollout_tps = rollout_tokens / step["timing_s/gen"]
    report = {key: round(value, 3) for key, value in step.items() if key.startswith("timing_s/")}
    report.update({
        "prompts": args.prompts, "max_response_length": args.response_length, "workers": args.workers,
        "rollout_tokens": rollout_tokens, "bare_generate_tokens": bare_tokens,
        "rollout_tokens_per_s": round(rollout_tps, 2), "bare_generate_tokens_per_s": round(bare_tps, 2),
        "rollout_vs_bare_ratio": round(rollout_tps / bare_tps, 3),
        "perf/throughput": round(step["perf/throughput"], 2), "bare_generate_threads": args.threads,
    })
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
