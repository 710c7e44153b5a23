"""fp32 against bf16 compute on the CPU path, side by side with SmolLM2-135M-Instruct: an RL step, an
SFT step, the engine's log-prob gap to the trainer's, and a short SFT's loss curve.

    python -m scripts.bench.precision_bench [--repeats 2] [--variant grpo-lora] [--trajectories 4]
        [--context-tokens 256] [--response-length 16] [--sft-rows 4] [--sft-tokens 256] [--sft-steps 6]
        [--threads 1] [--model DIR] [--out FILE]

A shared machine's speed drifts, so the two dtypes run alternately in one process (fp32, bf16, fp32,
bf16, ...) and each speed-up is the median over the repeats of the ratio within one adjacent pair:
- rl: one step of ppo_step_bench's `--variant` (every model computing in the dtype, the engine with
  them), `timing_s/*` per phase and `rollout/logprob_diff_max` (the engine's log-prob of the tokens
  it sampled against the trainer's, on the same tokens);
- sft_step: one `train_step` of the SFT trainer on `--sft-rows` conversations of `--sft-tokens`
  tokens (one process: bf16 runs under torch.autocast over fp32 weights);
- sft_losses: `--sft-steps` steps from the same start in each dtype on those rows (memorising them),
  the train loss after each.
Prints one JSON object: per dtype the medians and the losses, and `fp32_over_bf16`, per time the
median pair ratio and every pair's.
`--threads` is the torch threads of the SFT part; Ray gives each RL worker one.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scripts.bench.ppo_step_bench import VARIANTS, bench_config, emit_report, fit_on_ray, write_prompts

DTYPES = ("float32", "bfloat16")
PASSAGE = ("<information>\nDoc 1(Title: Dracula) Dracula is an 1897 Gothic horror novel by Irish author Bram "
           "Stoker. The narrative is related through letters, diary entries, and newspaper articles.\n</information>\n")


def rl_step(model_dir: str, data: str, workdir: Path, args: argparse.Namespace, dtype: str) -> dict:
    """One RL step with every model computing in `dtype`: its phase times and log-prob gap."""
    from verl.trainer.config import FSDP_NODES

    samples = 1 if args.variant == "ppo" else 2
    config = bench_config(model_dir, data, workdir / dtype, args.trajectories // samples, args, args.variant,
                          overrides=tuple(f"{node}.dtype={dtype}" for node in FSDP_NODES))
    (step,), _ = fit_on_ray(config, args)
    return {key: value for key, value in step.items()
            if key.startswith(("timing_s/", "rollout/logprob_diff"))}


def sft_rows(path: Path, rows: int, tokens: int, tokenizer) -> str:
    """`rows` agent-like conversations of about `tokens` tokens (retrieved passages fill them)."""
    passages = ""
    while len(tokenizer.encode(passages)) < tokens - 64:
        passages += PASSAGE
    conversations = [{"conversations": [
        {"from": "human", "value": f"Who wrote the novel Dracula? ({i})"},
        {"from": "gpt", "value": "<think> I need to search. </think>\n<search> Dracula author </search>"},
        {"from": "observation", "value": passages},
        {"from": "gpt", "value": f"<think> found it </think>\n<answer> Bram Stoker {i} </answer>"}]}
        for i in range(rows)]
    path.write_text("\n".join(json.dumps(row) for row in conversations) + "\n")
    return str(path)


def sft_model(model_dir: str, dtype: str):
    from verl.trainer.fsdp_sft_trainer import FSDPConfig, ModelConfig, build_model

    model = build_model(model_dir, ModelConfig(model_dir, fsdp_config=FSDPConfig(dtype=dtype)), "cpu", world_size=1)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)


def sft_step_seconds(model, optimizer, micro_batches) -> float:
    from verl.trainer.fsdp_sft_trainer import train_step

    start = time.perf_counter()
    train_step(model, optimizer, micro_batches, clip_grad=1.0)
    return time.perf_counter() - start


def sft_losses(model_dir: str, dtype: str, micro_batches, steps: int) -> list[float]:
    from verl.trainer.fsdp_sft_trainer import train_step

    torch.manual_seed(0)
    model, optimizer = sft_model(model_dir, dtype)
    return [round(train_step(model, optimizer, micro_batches, clip_grad=1.0)["train/loss"], 4) for _ in range(steps)]


def medians(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def pair_ratios(slow: list[dict], fast: list[dict]) -> dict:
    """Per time key: the median of slow / fast over the adjacent pairs, and each pair's ratio."""
    ratios = {key: [round(a[key] / b[key], 2) for a, b in zip(slow, fast, strict=True)]
              for key in slow[0] if key.startswith(("timing_s/", "seconds")) and min(b[key] for b in fast) > 0.01}
    return {key: {"median": round(statistics.median(values), 2), "pairs": values} for key, values in ratios.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement per dtype")
    parser.add_argument("--variant", default="grpo-lora", choices=list(VARIANTS))
    parser.add_argument("--trajectories", type=int, default=4)
    parser.add_argument("--context-tokens", type=int, default=256)
    parser.add_argument("--response-length", type=int, default=16)
    parser.add_argument("--sft-rows", type=int, default=4)
    parser.add_argument("--sft-tokens", type=int, default=256)
    parser.add_argument("--sft-steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", type=Path, default=None,
                        help="an HF checkpoint (default: SmolLM2-135M-Instruct converted from the pip-shipped GGUF)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.token_budget, args.workers, args.device = 4096, 1, "cpu"  # what bench_config reads besides

    from transformers import AutoTokenizer

    from rag_r1.models.smollm2 import convert
    from verl.utils.dataset.sft_dataset import SFTDataset
    from verl.utils.precision import cpu_has_bf16_matmul

    model_dir = str(args.model or convert())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    workdir = Path(tempfile.mkdtemp(prefix="precision_bench_"))
    data = write_prompts(workdir / "prompts.parquet", args.trajectories, args.context_tokens, tokenizer)
    sft_set = SFTDataset(sft_rows(workdir / "sft.jsonl", args.sft_rows, args.sft_tokens, tokenizer), tokenizer,
                         max_length=args.sft_tokens + 64, progress=False)
    micro_batches = [sft_set.collate([sft_set[i] for i in range(len(sft_set))])]
    torch.set_num_threads(args.threads)

    # the RL runs first, then the SFT models: the two never take memory at the same time
    runs = {dtype: {"rl": [], "sft_step": []} for dtype in DTYPES}
    for _ in range(args.repeats):
        for dtype in DTYPES:
            runs[dtype]["rl"].append(rl_step(model_dir, data, workdir, args, dtype))
    sft = {dtype: sft_model(model_dir, dtype) for dtype in DTYPES}
    for dtype in DTYPES:  # warm-up: first calls allocate and pick kernels
        sft_step_seconds(*sft[dtype], micro_batches)
    for _ in range(args.repeats):
        for dtype in DTYPES:
            runs[dtype]["sft_step"].append({"seconds": sft_step_seconds(*sft[dtype], micro_batches)})
    del sft

    report = {"cpu_has_bf16_matmul": cpu_has_bf16_matmul(), "variant": args.variant, "repeats": args.repeats,
              "trajectories": args.trajectories, "context_tokens": args.context_tokens,
              "response_length": args.response_length, "sft_batch_tokens": int(micro_batches[0]["attention_mask"].sum()),
              "threads": args.threads}
    for dtype in DTYPES:
        report[dtype] = {"rl": medians(runs[dtype]["rl"]), "sft_step_s": medians(runs[dtype]["sft_step"])["seconds"],
                         "sft_losses": sft_losses(model_dir, dtype, micro_batches, args.sft_steps)}
    fp32, bf16 = runs["float32"], runs["bfloat16"]
    report["fp32_over_bf16"] = {**pair_ratios(fp32["rl"], bf16["rl"]),
                                "sft_step": pair_ratios(fp32["sft_step"], bf16["sft_step"])["seconds"]}
    emit_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
