"""Time one RL step with SmolLM2-135M-Instruct, phase by phase, per algorithm variant, with each
worker's peak memory; and compare the trainer's rollout tokens/s with bare `model.generate`.

    python -m scripts.bench.ppo_step_bench [--variants ppo grpo grpo-lora] [--trajectories 8]
        [--context-tokens 1500] [--response-length 32] [--token-budget 4096] [--workers 1]
        [--device cpu|cuda] [--model DIR] [--out FILE]
    python -m scripts.bench.ppo_step_bench --one-step-off [--steps 4] [...]

Variants (the same number of trajectories each, the same prompts):
- ppo: the paper's PPO: GAE with a critic, KL to a reference policy in the reward (a ref model);
- grpo: groups of 2 samples per prompt, no critic, no KL, so no reference model is built; one
  mini-batch per step, so the old log-probs are not recomputed (on-policy);
- grpo-lora: grpo with LoRA rank 16 on all linear layers of the actor.
Every variant uses token-budget micro-batches (use_dynamic_bsz). `--context-tokens` pads each
prompt with passage-like text, so sequences are as long as an agent's after a retrieval round.
Rollouts are greedy, so the bare generate produces the same tokens and the ratio compares like with
like (bare generate is timed after a 2-token warm-up; the trainer's includes its first call).
Prints one JSON object per variant: `timing_s/<phase>`, `peak_rss_gb/<worker>` and the rollout vs
bare generate tokens/s.

`--one-step-off` instead times `--steps` steps of grpo-lora (the demo's kind of run) on the rollout
servers (rollout.mode=async), synchronous (rollout.lag=0) and one step off (rollout.lag=1, the next
step's rollout sampled while this step trains), same model and prompts, and prints their step times
side by side: the ratio of the mean step times of the steps between the first (lag 1 samples two
batches there) and the last (it samples none), the ratio of the whole runs' times, and the share of
the rollouts sampled ahead that ran while the step was training.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import torch

QUESTIONS = ["Who wrote the novel Dracula?", "What is the capital of Australia?",
             "When did the Berlin Wall fall?", "Which planet is the largest in the solar system?",
             "Who painted the Mona Lisa?", "What is the boiling point of water in Fahrenheit?",
             "Which element has the chemical symbol K?", "How many strings does a violin have?"]
PASSAGE = ("Doc 1(Title: Dracula) Dracula is an 1897 Gothic horror novel by Irish author Bram Stoker. "
           "The narrative is related through letters, diary entries, and newspaper articles. ")
VARIANTS = {
    "ppo": ["algorithm.adv_estimator=gae", "algorithm.use_kl_in_reward=true", "actor_rollout_ref.rollout.n=1"],
    "grpo": ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=2"],
    "grpo-lora": ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=2",
                  "actor_rollout_ref.model.lora_rank=16", "actor_rollout_ref.model.lora_alpha=32"],
}


def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """1.0 when the ground-truth answer appears in the response (the bench only needs a number)."""
    return float(ground_truth.lower() in solution_str.lower())


def write_prompts(path: Path, n: int, context_tokens: int, tokenizer) -> str:
    context = ""
    while len(tokenizer.encode(context)) < context_tokens:
        context += PASSAGE
    rows = [{"data_source": "bench", "ability": "qa", "extra_info": {"index": i},
             "prompt": [{"role": "user", "content": context + QUESTIONS[i % len(QUESTIONS)]}],
             "reward_model": {"style": "rule", "ground_truth": "the"}} for i in range(n)]
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def bench_config(model_dir: str, data: str, workdir: Path, prompts: int, args: argparse.Namespace, variant: str,
                 steps: int = 1, overrides: tuple[str, ...] = ()):
    from verl.trainer.config import compose_config

    return compose_config([
        f"data.train_files={data}", f"data.val_files={data}", f"data.train_batch_size={prompts}",
        "data.shuffle=false", f"data.max_prompt_length={args.context_tokens + 128}",
        f"data.max_response_length={args.response_length}",
        f"actor_rollout_ref.model.path={model_dir}", "actor_rollout_ref.rollout.do_sample=false",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={prompts}", f"critic.ppo_mini_batch_size={prompts}",
        "actor_rollout_ref.actor.use_dynamic_bsz=true", "critic.use_dynamic_bsz=true",
        f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={args.token_budget}",
        f"critic.ppo_max_token_len_per_gpu={args.token_budget}",
        f"trainer.total_training_steps={steps}", "trainer.val_before_train=false",
        "trainer.logger=[console]", f"trainer.n_gpus_per_node={args.workers}", "trainer.resume_mode=disable",
        f"trainer.device={args.device}", f"trainer.default_local_dir={workdir / variant / 'ckpt'}",
        f"custom_reward_function.path={Path(__file__).resolve()}", "custom_reward_function.name=compute_score",
        *VARIANTS[variant], *overrides,
    ])


def bare_generate_tokens_per_s(model_dir: str, prompts, max_new_tokens: int, device: str) -> tuple[float, int]:
    """tokens/s of plain HF generate (greedy) on the trainer's first batch of prompts, in the dtype
    the trainer's rollout uses by default (rollout.dtype auto: bf16 on GPU and on a CPU with bf16
    instructions, else fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl.utils.precision import AUTO, engine_dtype

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = engine_dtype(AUTO, use_gpu=device == "cuda")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    input_ids, attention_mask = prompts.batch["input_ids"].to(device), prompts.batch["attention_mask"].to(device)

    def generate(new_tokens: int):
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    generate(2)  # warm-up
    start = time.perf_counter()
    out = generate(max_new_tokens)
    seconds = time.perf_counter() - start
    tokens = 0
    for row in out[:, input_ids.shape[1]:].tolist():  # through the first eos, as the rollout counts them
        tokens += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
    return tokens / seconds, tokens


def run_variant(model_dir: str, data: str, workdir: Path, args: argparse.Namespace, variant: str) -> dict:
    n = 1 if variant == "ppo" else 2
    config = bench_config(model_dir, data, workdir, args.trajectories // n, args, variant)
    (step,), memory = fit_on_ray(config, args)
    report = {key: round(value, 3) for key, value in step.items() if key.startswith("timing_s/")}
    report.update({f"peak_rss_gb/{worker}": round(b / 2**30, 2) for worker, b in memory.items()})
    report.update({"trajectories": args.trajectories, "response_length/mean": step["response_length/mean"],
                   "prompt_length/mean": step["prompt_length/mean"],
                   "rollout_tokens_per_s": round(step["response_length/mean"] * args.trajectories / step["timing_s/gen"], 2)})
    return report


def fit_on_ray(config, args: argparse.Namespace) -> tuple[list[dict], dict[str, int]]:
    """Train `config` in a Ray session of its own: (every step's metrics, peak RSS bytes per worker)."""
    from verl.trainer.main_ppo import build_trainer

    ray.init(num_cpus=max(2, args.workers * 2), num_gpus=1 if args.device == "cuda" else 0,
             include_dashboard=False, log_to_driver=False)
    try:
        trainer = build_trainer(config)
        history = trainer.fit()
        memory = {"actor": max(trainer.actor_rollout_wg.peak_rss_bytes())}
        if trainer.critic_wg is not None:
            memory["critic"] = max(trainer.critic_wg.peak_rss_bytes())
    finally:
        ray.shutdown()
    return history, memory


def one_step_off_report(sync: list[dict], one_step_off: list[dict]) -> dict:
    """Step times of the same run at rollout.lag=0 (`sync`) and lag=1, from their per-step metrics.
    Both runs do the same work (one rollout and one update per step), but lag 1 does two rollouts in
    its first step and none in its last: `step_time_ratio` compares the steps between (the steady
    state of a long run), `run_time_ratio` the whole runs. `rollout_overlapped_share`: of the time the
    rollouts sampled ahead took, the share the step was still training (1 - the time the step then
    waited for them / their duration)."""
    def steady_mean(history: list[dict], key: str) -> float:
        return float(np.mean([h[key] for h in history[1:-1]]))

    def run_time(history: list[dict]) -> float:
        return sum(h["timing_s/step"] for h in history)

    ahead = sum(h["timing_s/gen_ahead"] for h in one_step_off if "timing_s/gen_ahead" in h)
    waited = sum(h["timing_s/gen_ahead_wait"] for h in one_step_off if "timing_s/gen_ahead_wait" in h)
    sync_step, off_step = steady_mean(sync, "timing_s/step"), steady_mean(one_step_off, "timing_s/step")
    return {
        "steps": len(sync),
        "sync_step_s": [round(h["timing_s/step"], 2) for h in sync],
        "one_step_off_step_s": [round(h["timing_s/step"], 2) for h in one_step_off],
        "sync_step_s_mean": round(sync_step, 2), "one_step_off_step_s_mean": round(off_step, 2),
        "step_time_ratio": round(off_step / sync_step, 3),  # one step off / sync; < 1 is faster
        "sync_run_s": round(run_time(sync), 2), "one_step_off_run_s": round(run_time(one_step_off), 2),
        "run_time_ratio": round(run_time(one_step_off) / run_time(sync), 3),
        "sync_gen_s_mean": round(steady_mean(sync, "timing_s/gen"), 2),
        "sync_update_actor_s_mean": round(steady_mean(sync, "timing_s/update_actor"), 2),
        "one_step_off_update_actor_s_mean": round(steady_mean(one_step_off, "timing_s/update_actor"), 2),
        "rollout_ahead_s": round(ahead, 2), "rollout_ahead_wait_s": round(waited, 2),
        "rollout_overlapped_share": round(1 - waited / ahead, 3),
    }


def compare_one_step_off(model_dir: str, data: str, workdir: Path, args: argparse.Namespace) -> dict:
    """`args.steps` steps of grpo-lora on the rollout servers at rollout.lag=0, then at lag=1."""
    histories = []
    for lag in (0, 1):
        config = bench_config(model_dir, data, workdir / f"lag{lag}", args.trajectories // 2, args, "grpo-lora",
                              steps=args.steps, overrides=("actor_rollout_ref.rollout.mode=async",
                                                           f"actor_rollout_ref.rollout.lag={lag}"))
        histories.append(fit_on_ray(config, args)[0])
    return one_step_off_report(*histories)


def variant_reports(model_dir: str, data: str, workdir: Path, args: argparse.Namespace) -> dict:
    """Bare generate's tokens/s, then one step of each of `args.variants`."""
    from verl.trainer.main_ppo import load_tokenizer
    from verl.utils.dataset import RLHFDataset, StatefulLoader

    config = bench_config(model_dir, data, workdir, args.trajectories, args, "ppo")
    dataset = RLHFDataset(config.data.train_files, load_tokenizer(config), config.data)
    first_batch = next(iter(StatefulLoader(dataset, args.trajectories, shuffle=False)))  # the step's prompts
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    bare_tps, bare_tokens = bare_generate_tokens_per_s(model_dir, first_batch, args.response_length, args.device)
    torch.set_num_threads(threads)
    report = {"bare_generate_tokens_per_s": round(bare_tps, 2), "bare_generate_tokens": bare_tokens,
              "bare_generate_threads": args.threads}
    for variant in args.variants:
        result = run_variant(model_dir, data, workdir, args, variant)
        result["rollout_vs_bare_ratio"] = round(result["rollout_tokens_per_s"] / bare_tps, 3)
        report[variant] = result
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--trajectories", type=int, default=8, help="rollouts per step (prompts x samples)")
    parser.add_argument("--context-tokens", type=int, default=1500, help="prompt length before the question")
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--token-budget", type=int, default=4096, help="ppo_max_token_len_per_gpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the bare generate; Ray gives each worker OMP_NUM_THREADS=1")
    parser.add_argument("--model", type=Path, default=None,
                        help="an HF checkpoint (default: SmolLM2-135M-Instruct converted from the pip-shipped GGUF)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one-step-off", action="store_true",
                        help="compare synchronous and one-step-off training instead (see above)")
    parser.add_argument("--steps", type=int, default=4, help="steps of each --one-step-off run")
    args = parser.parse_args(argv)
    if args.trajectories % 2:
        parser.error("--trajectories must be even (grpo samples 2 per prompt)")
    if args.steps < 3:
        parser.error("--steps must be >= 3 (the steps between the first and the last are compared)")

    from transformers import AutoTokenizer

    from rag_r1.models.smollm2 import convert

    model_dir = str(args.model or convert())
    workdir = Path(tempfile.mkdtemp(prefix="ppo_step_bench_"))
    data = write_prompts(workdir / "prompts.parquet", args.trajectories, args.context_tokens,
                         AutoTokenizer.from_pretrained(model_dir))
    report = {"device": args.device, "workers": args.workers, "context_tokens": args.context_tokens,
              "max_response_length": args.response_length, "token_budget": args.token_budget}
    if args.one_step_off:
        result = report["one_step_off"] = compare_one_step_off(model_dir, data, workdir, args)
        print(f"mean step between the first and the last: one step off {result['one_step_off_step_s_mean']} s, "
              f"synchronous {result['sync_step_s_mean']} s, ratio {result['step_time_ratio']}; whole runs: ratio "
              f"{result['run_time_ratio']}; {result['rollout_overlapped_share']:.0%} of the rollouts sampled ahead "
              "ran while the step trained")
    else:
        report.update(variant_reports(model_dir, data, workdir, args))
    emit_report(report, args.out)
    return report


def emit_report(report: dict, out: Path | None) -> None:
    """Print a benchmark's report as JSON, and write it to `out` when one is given."""
    print(json.dumps(report, indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
