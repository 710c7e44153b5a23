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

import argparse
import json
import signal
import statistics
import sys
from pathlib import Path

from scripts.bench.prefix_cache_bench import default_model, run_path
from scripts.bench.rollout_bench import ROOT, load_items, start_server

DEMO = ROOT / "data" / "demo"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="default: an SFT checkpoint of make results/demo, "
                   "else the untrained SmolLM2-135M-Instruct")
    p.add_argument("--corpus", type=Path, default=DEMO / "corpus.jsonl")
    p.add_argument("--questions", type=Path, default=DEMO / "train.jsonl")
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--mode", default="multi")
    p.add_argument("--max-turns", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-obs-length", type=int, default=512)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "attention_bench.json")
    args = p.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rag_r1.llm_agent.prompts import user_content
    from verl.utils.attention import NAME

    model_dir = args.model or default_model()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    models = {name: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=name).eval()
              for name in ("sdpa", NAME)}
    items = load_items(args.questions, args.corpus, args.n)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": user_content(i["question"], args.mode)}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
               for i in items]
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
