"""Multi-turn agent rollouts continued from the KV cache vs re-encoding the whole context each turn.

    python -m scripts.bench.prefix_cache_bench [--model DIR] [--questions ../shared/data/hotpotqa_closed/train.jsonl]
        [--n 16] [--repeat 1] [--mode multi] [--max-turns 3] [--max-new-tokens 96] [--max-obs-length 1000] [--url URL]

Same model, same questions, greedy decoding, the same GenerationManager and HFRollout; only
`enable_prefix_caching` differs. `--repeat k` puts each question in the batch k times in a row, as
GRPO's k samples of a question are (the cache then encodes each distinct prompt once). Retrieval is
real: BM25 over the corpus served by start_retrieval.py on loopback (as in rollout_bench). Prints,
per path, the prefill tokens (real tokens encoded before generating, per trajectory), the positions
encoded (with padding), the seconds per trajectory, and whether the two paths produced
token-identical trajectories.
The model should be one that searches (an SFT checkpoint: outputs/demo/checkpoints/sft after
`make demo`); the untrained model mostly writes no action and only gets corrective notes.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from rag_r1.llm_agent.config import MODES, AgentConfig
from scripts.bench.rollout_bench import ROOT, SHARED, load_items, start_server


def default_model() -> Path:
    for candidate in (ROOT / "results" / "checkpoints" / "sft", ROOT / "outputs" / "demo" / "checkpoints" / "sft"):
        if (candidate / "config.json").is_file():
            return candidate
    from rag_r1.models.smollm2 import convert

    return convert()


def rollout_arguments(doc: str, *, data: Path, n: int, batch_size: int, max_turns: int, max_new_tokens: int,
                      max_obs_length: int) -> argparse.ArgumentParser:
    """The options of a benchmark of agent rollouts over `data` (corpus.jsonl, train.jsonl), with its defaults."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="default: an SFT checkpoint of make results/demo, "
                   "else the untrained SmolLM2-135M-Instruct")
    p.add_argument("--corpus", type=Path, default=data / "corpus.jsonl")
    p.add_argument("--questions", type=Path, default=data / "train.jsonl")
    p.add_argument("--n", type=int, default=n)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--mode", choices=MODES, default=AgentConfig.mode)
    p.add_argument("--max-turns", type=int, default=max_turns)
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--max-obs-length", type=int, default=max_obs_length)
    return p


def chat_prompts(tokenizer, items: list[dict], mode: str, repeat: int = 1) -> list[list[int]]:
    """The agent's first prompt of each question, as token ids, each `repeat` times in a row."""
    from rag_r1.llm_agent.prompts import user_content

    return [tokenizer.apply_chat_template([{"role": "user", "content": user_content(i["question"], mode)}],
                                          add_generation_prompt=True, tokenize=True, return_dict=False)
            for i in items for _ in range(repeat)]


def write_report(report: dict, out: Path) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return report


def run_path(model, tokenizer, prompts, url: str, args: argparse.Namespace, caching: bool) -> dict:
    from rag_r1.llm_agent.generation import GenerationManager
    from rag_r1.search.client import RetrievalClient
    from verl.trainer.config import rollout_config
    from verl.workers.rollout.hf_rollout import HFRollout

    engine = HFRollout(model, tokenizer, rollout_config(response_length=args.max_new_tokens, enable_prefix_caching=caching))
    config = AgentConfig(max_prompt_length=8192, max_start_length=2048, max_response_length=args.max_new_tokens,
                         mode=args.mode, max_turns=args.max_turns, max_obs_length=args.max_obs_length)
    rows = []
    start = time.perf_counter()
    with RetrievalClient(url) as client:
        manager = GenerationManager(engine.generate_sequences, tokenizer, client, config)
        for i in range(0, len(prompts), args.batch_size):
            rows += manager.run(prompts[i:i + args.batch_size], {"do_sample": False})[0]
    seconds = time.perf_counter() - start
    n = len(rows)
    return {"seconds_per_trajectory": seconds / n, "prefill_tokens_per_trajectory": engine.prefill_tokens / n,
            "prefill_positions_per_trajectory": engine.prefill_positions / n,
            "turns_mean": sum(r.turns for r in rows) / n, "searches_mean": sum(r.search_calls for r in rows) / n,
            "response_tokens_mean": sum(len(r.response) for r in rows) / n,
            "responses": [r.response for r in rows]}


def main(argv: list[str] | None = None) -> dict:
    p = rollout_arguments(__doc__, data=SHARED, n=16, batch_size=16, max_turns=3, max_new_tokens=96,
                          max_obs_length=AgentConfig.max_obs_length)
    p.add_argument("--repeat", type=int, default=1, help="rows per question, one after another (GRPO's n)")
    p.add_argument("--url", help="an already running retrieval server over --corpus")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "prefix_cache_bench.json")
    args = p.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = args.model or default_model()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    items = load_items(args.questions, args.corpus, args.n)
    prompts = chat_prompts(tokenizer, items, args.mode, args.repeat)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server on kill/timeout
    proc, url = (None, args.url) if args.url else start_server(args.corpus)
    try:
        results = {name: run_path(model, tokenizer, prompts, url, args, caching)
                   for name, caching in (("re-encode", False), ("kv-cache", True))}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
    identical = results["re-encode"].pop("responses") == results["kv-cache"].pop("responses")
    old, new = results["re-encode"], results["kv-cache"]
    report = {"model": str(model_dir), "n": len(items), "repeat": args.repeat, "mode": args.mode, **results,
              "identical_greedy_trajectories": identical,
              "prefill_tokens_ratio": round(new["prefill_tokens_per_trajectory"] / old["prefill_tokens_per_trajectory"], 3),
              "speedup": round(old["seconds_per_trajectory"] / new["seconds_per_trajectory"], 3)}
    print(f"{len(items)} questions x {args.repeat}, {args.mode} mode, model {model_dir}")
    print(f"{'path':10} {'prefill tok/traj':>16} {'positions/traj':>14} {'s/traj':>7} {'turns':>5} {'searches':>8}")
    for name, r in results.items():
        print(f"{name:10} {r['prefill_tokens_per_trajectory']:>16.1f} {r['prefill_positions_per_trajectory']:>14.1f} "
              f"{r['seconds_per_trajectory']:>7.2f} {r['turns_mean']:>5.2f} {r['searches_mean']:>8.2f}")
    print(f"identical greedy trajectories: {identical}; prefill tokens x{report['prefill_tokens_ratio']}; "
          f"speed-up x{report['speedup']}")
    return write_report(report, args.out)


if __name__ == "__main__":
    main()
