"""The HF engine's agent rollouts with transformers' sdpa against sdpa_gqa (verl/utils/attention.py).

    python -m scripts.bench.attention_bench [--model DIR] [--questions data/demo/train.jsonl]
        [--n 24] [--batch-size 12] [--repeats 2] [--max-turns 2] [--max-new-tokens 64] [--max-obs-length 512]

Same model weights, same questions, greedy decoding, the same GenerationManager and HFRollout with
its prefix cache (prefix_cache_bench's path); only the attention implementation differs. The two
run alternately in one process (sdpa, sdpa_gqa, sdpa, ...) because a shared machine's speed drifts;
the speed-up is the median over the repeats of the ratio within one adjacent pair. Retrieval is
BM25 over the corpus on loopback. Prints seconds per trajectory for each, the speed-up, and whether
the two produced token-identical trajectories.
"""
from __future__ import annotations

import signal
import statistics
import sys
from pathlib import Path

from scripts.bench.prefix_cache_bench import chat_prompts, default_model, rollout_arguments, run_path, write_report
from scripts.bench.rollout_bench import ROOT, load_items, start_server

DEMO = ROOT / "data" / "demo"


def main(argv: list[str] | None = None) -> dict:
    p = rollout_arguments(__doc__, data=DEMO, n=24, batch_size=12, max_turns=2, max_new_tokens=64, max_obs_length=512)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "attention_bench.json")
    args = p.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl.utils.attention import NAME

    model_dir = args.model or default_model()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    models = {name: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=name).eval()
              for name in ("sdpa", NAME)}
    items = load_items(args.questions, args.corpus, args.n)
    prompts = chat_prompts(tokenizer, items, args.mode)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server on kill/timeout
    proc, url = start_server(args.corpus)
    seconds = {name: [] for name in models}
    responses = {}
    try:
        for _ in range(args.repeats):
            for name, model in models.items():
                result = run_path(model, tokenizer, prompts, url, args, caching=True)
                seconds[name].append(result["seconds_per_trajectory"])
                responses[name] = result["responses"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    ratios = [old / new for old, new in zip(seconds["sdpa"], seconds[NAME])]
    report = {"model": str(model_dir), "n": len(items), "batch_size": args.batch_size,
              "seconds_per_trajectory": seconds, "speedup_pairs": [round(r, 3) for r in ratios],
              "speedup": round(statistics.median(ratios), 3),
              "identical_greedy_trajectories": responses["sdpa"] == responses[NAME]}
    print(f"{len(items)} questions in batches of {args.batch_size}, {args.mode} mode, model {model_dir}")
    for name, values in seconds.items():
        print(f"{name:9} s/trajectory {' '.join(f'{v:.3f}' for v in values)}")
    print(f"sdpa_gqa speed-up x{report['speedup']} (pairs {report['speedup_pairs']}); identical greedy "
          f"trajectories: {report['identical_greedy_trajectories']}")
    return write_report(report, args.out)


if __name__ == "__main__":
    main()
