"""The actor's update with and without backpropagating the rows that have no advantage, side by side,
with SmolLM2-135M-Instruct and a LoRA adapter on the CPU.

    python -m scripts.bench.update_bench [--rows 16] [--silent-share 0.5] [--context-tokens 1000]
        [--response-length 250] [--token-budget 2048] [--repeats 3] [--dtype bfloat16] [--model DIR] [--out FILE]

A row whose advantage is 0 on every scored token (a GRPO group that scored alike, a wrong sample
weighed 0 by algorithm.negative_advantage_scale, a guide-only control's own samples) adds nothing to
a policy-gradient loss's gradient; the actor runs it forward without a graph, for its metrics only.
This times `update_policy` on one batch in which `--silent-share` of the rows have no advantage, with
those rows looked at (the trainer's way) and with every row backpropagated (the way before), in
alternating order in one process (a shared machine's speed drifts), and prints the median of the
adjacent pairs' time ratios and the largest difference between the two ways' gradients.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from scripts.bench.ppo_step_bench import emit_report


def actor_and_batch(model_dir: str, args: argparse.Namespace):
    """A LoRA actor over the model (fp32 weights, computing in --dtype) and a batch of agent-like rows:
    a long context, a response with a retrieved block in its middle (not scored)."""
    from verl.trainer.config import schema_node
    from verl.utils.lora import apply_lora
    from verl.utils.model import load_causal_lm
    from verl.workers.actor.dp_actor import DataParallelPPOActor
    from verl.workers.rollout.base import assemble_output, build_prompt_batch

    config = schema_node("actor_rollout_ref", {
        "model": {"path": model_dir, "lora_rank": 16, "lora_alpha": 32},
        "actor": {"ppo_mini_batch_size": args.rows, "use_dynamic_bsz": True,
                  "ppo_max_token_len_per_gpu": args.token_budget},
    })
    model = apply_lora(load_causal_lm(config.model), config.model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    actor = DataParallelPPOActor(config.actor, model, optimizer, mini_batch_size=args.rows)

    g = torch.Generator().manual_seed(0)
    rows, prompt, response = args.rows, args.context_tokens, args.response_length
    vocab = model.config.vocab_size
    prompts = build_prompt_batch(torch.randint(10, vocab, (rows, prompt), generator=g).tolist(), pad_token_id=0)
    data = assemble_output(prompts, torch.randint(10, vocab, (rows, response), generator=g),
                           torch.ones(rows, response, dtype=torch.long))
    info = torch.zeros(rows, response, dtype=torch.long)
    info[:, response // 4: response // 2] = 1
    advantages = torch.randn(rows, 1, generator=g).sign().expand(rows, response).clone()
    advantages[torch.arange(rows) < round(args.silent_share * rows)] = 0.0
    data.batch["info_mask"], data.batch["advantages"] = info, advantages
    data.meta_info = {"temperature": 1.0}
    return actor, data


def timed_update(actor, data, look_only: bool, dtype: torch.dtype) -> tuple[float, list[torch.Tensor]]:
    """Seconds of one update_policy, and the adapter's gradients it applied."""
    if not look_only:
        actor._rows_without_advantage = lambda d: torch.zeros(len(d), dtype=torch.bool)
    else:
        actor.__dict__.pop("_rows_without_advantage", None)
    grads: list[torch.Tensor] = []
    step = actor.optimizer.step

    def recording_step(*a, **k):
        grads.extend(p.grad.detach().clone() for p in actor.module.parameters() if p.grad is not None)
        # leave the weights alone: every update starts from the same adapter
    actor.optimizer.step = recording_step
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        actor.update_policy(data)
    seconds = time.perf_counter() - start
    actor.optimizer.step = step
    return seconds, grads


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16, help="trajectories in the batch (one mini-batch)")
    parser.add_argument("--silent-share", type=float, default=0.5, help="share of the rows with no advantage")
    parser.add_argument("--context-tokens", type=int, default=1000, help="tokens before the response")
    parser.add_argument("--response-length", type=int, default=250)
    parser.add_argument("--token-budget", type=int, default=2048, help="ppo_max_token_len_per_gpu")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of updates")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--model", type=Path, default=None,
                        help="an HF checkpoint (default: SmolLM2-135M-Instruct converted from the pip-shipped GGUF)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 0 <= args.silent_share < 1:
        parser.error("--silent-share must be in [0, 1)")

    from rag_r1.models.smollm2 import convert

    actor, data = actor_and_batch(str(args.model or convert()), args)
    dtype = getattr(torch, args.dtype)
    every, looked = [], []
    for _ in range(args.repeats):
        every.append(timed_update(actor, data, look_only=False, dtype=dtype))
        looked.append(timed_update(actor, data, look_only=True, dtype=dtype))
    ratios = [a[0] / b[0] for a, b in zip(every, looked)]
    gap = max(float((a - b).abs().max()) for a, b in zip(every[0][1], looked[0][1]))
    scale = max(float(a.abs().max()) for a in every[0][1])
    report = {"rows": args.rows, "silent_rows": round(args.silent_share * args.rows),
              "tokens_per_row": args.context_tokens + args.response_length, "dtype": args.dtype,
              "every_row_s": [round(s, 2) for s, _ in every], "silent_rows_looked_at_s": [round(s, 2) for s, _ in looked],
              "every_row_over_looked_at": round(statistics.median(ratios), 3),
              "pair_ratios": [round(r, 3) for r in ratios],
              "grad_max_abs_diff": gap, "grad_max_abs": scale}
    emit_report(report, args.out)
    print(f"update with {report['silent_rows']} of {args.rows} rows without advantage: every row backpropagated "
          f"{statistics.median(s for s, _ in every):.1f} s, those rows only looked at "
          f"{statistics.median(s for s, _ in looked):.1f} s, ratio {report['every_row_over_looked_at']}; "
          f"gradients differ by at most {gap:.2e} (largest {scale:.2e})")
    return report


if __name__ == "__main__":
    main()
