"""Agent rollout: retrieval requests per turn and wall time, single- vs multi-query mode.

    python -m scripts.bench.rollout_bench [--corpus ../shared/data/hotpotqa_closed/corpus.jsonl] \
        [--questions ../shared/data/hotpotqa_closed/test.jsonl] [--n 32] [--repeats 3] [--url URL] \
        [--engine scripted|hf] [--model DIR]

Same questions, same evidence, two modes. A scripted policy (rag_r1.llm_agent.scripted) asks,
for every question, the question itself and the title of its first supporting passage:
single mode in two turns of one query each, multi mode in one turn of two queries; then it
answers. Retrieval is real: BM25 over the corpus, served by start_retrieval.py on loopback
(started here unless --url is given; the index is cached under .cache/rollout_bench/).

Reported per mode (median over --repeats): retrieval requests per turn, queries sent, wall time
split into engine (generate), retrieval and the manager's own work (parsing, tokenizing, batching:
total - generate - retrieval), and the recall of supporting passages in what was retrieved.
With `--engine hf` the same manager drives HFRollout on a model (default: the tests' tiny random
Llama), so the overhead share is measured against real generation (that policy never searches).
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "rollout_bench"
SHARED = ROOT / ".." / "shared" / "data" / "hotpotqa_closed"


def start_server(corpus: Path) -> tuple[subprocess.Popen, str]:
    from rag_r1.search.bm25 import build_bm25
    from rag_r1.search.launcher import ServerProcess

    index = CACHE / f"bm25_{corpus.stem}_{corpus.stat().st_size}"
    if not (index / ".done").exists():
        build_bm25(corpus, index)
        (index / ".done").touch()
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    # no cache: every repeat pays the real search
    server = ServerProcess(["--retriever", "bm25", "--corpus", corpus, "--index", index, "--cache-size", "0"], log)
    try:
        server.start(timeout=180)
    except RuntimeError as err:
        raise SystemExit(str(err)) from err
    return server.proc, server.retrieve_url


def load_items(questions: Path, corpus: Path, n: int) -> list[dict]:
    from rag_r1.search.corpus import split_title

    items = [json.loads(line) for line in questions.read_text().splitlines() if line.strip()][:n]
    wanted = {item["supporting_ids"][0] for item in items}
    titles = {}
    with corpus.open() as f:
        for line in f:
            passage = json.loads(line)
            if passage["id"] in wanted:
                titles[passage["id"]] = split_title(passage["contents"])[0]
    for item in items:
        item["title"] = titles[item["supporting_ids"][0]]
    return items


def scripts_for(items: list[dict], mode: str) -> dict[str, list[str]]:
    """Per question: its two queries in as many searches as the mode needs (two single, one multi),
    written as the mode writes them, then the answer."""
    from rag_r1.llm_agent.modes import build_mode
    from rag_r1.llm_agent.prompts import format_question

    agent_mode = build_mode(mode)
    per_search = agent_mode.queries_per_search
    scripts = {}
    for item in items:
        queries = [agent_mode.as_query(item["question"]), agent_mode.as_query(item["title"])]
        searches = [queries[i:i + per_search] for i in range(0, len(queries), per_search)]
        turns = [f"<think> {len(q)} fact(s) to find. </think>\n<search> {agent_mode.join_queries(q)} </search>"
                 for q in searches]
        turns.append(f"<think> Found it. </think>\n<answer> {item['golden_answers'][0]} </answer>")
        scripts[format_question(item["question"])] = turns
    return scripts


def run_mode(mode: str, items, tokenizer, url: str, args: argparse.Namespace, model_dir: Path | None) -> dict:
    from rag_r1.llm_agent.config import AgentConfig
    from rag_r1.llm_agent.generation import GenerationManager
    from rag_r1.llm_agent.prompts import user_content
    from rag_r1.llm_agent.scripted import ScriptedPolicy
    from rag_r1.search.client import RetrievalClient

    if args.engine == "scripted":
        generate = ScriptedPolicy(tokenizer, scripts_for(items, mode))
        turn_cap, max_turns = 256, AgentConfig.max_turns
    else:
        from transformers import AutoModelForCausalLM

        from verl.trainer.config import rollout_config
        from verl.workers.rollout.hf_rollout import HFRollout

        model = AutoModelForCausalLM.from_pretrained(model_dir)
        turn_cap, max_turns = args.max_new_tokens, args.max_turns
        generate = HFRollout(model, tokenizer, rollout_config(response_length=turn_cap)).generate_sequences
    config = AgentConfig(max_prompt_length=4096, max_start_length=2048, max_response_length=turn_cap,
                         mode=mode, max_turns=max_turns)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": user_content(i["question"], mode)}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
               for i in items]
    runs = []
    with RetrievalClient(url) as client:
        manager = GenerationManager(generate, tokenizer, client, config)
        for _ in range(args.repeats):
            rows, stats = manager.run(prompts, {"do_sample": False})
            recall = statistics.mean(
                len(set(i["supporting_ids"]) & {pid for ids in r.retrieved_ids for pid in ids}) / 2
                for i, r in zip(items, rows))
            runs.append({"total_s": stats.total_s, "generate_s": stats.generate_s, "retrieve_s": stats.retrieve_s,
                         "overhead_s": stats.total_s - stats.generate_s - stats.retrieve_s,
                         "requests": stats.retrieval_requests, "requests_per_turn": stats.requests_per_turn,
                         "queries_sent": stats.queries_sent, "turns_mean": statistics.mean(r.turns for r in rows),
                         "answered": statistics.mean(r.answered for r in rows), "evidence_recall": recall})
    median = {k: statistics.median(r[k] for r in runs) for k in ("total_s", "generate_s", "retrieve_s", "overhead_s")}
    return {**runs[0], **median, "overhead_share": median["overhead_s"] / median["total_s"], "repeats": args.repeats}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=SHARED / "corpus.jsonl")
    p.add_argument("--questions", type=Path, default=SHARED / "test.jsonl")
    p.add_argument("--n", type=int, default=32, help="questions (one trajectory each)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--url", help="an already running retrieval server over --corpus")
    p.add_argument("--engine", choices=["scripted", "hf"], default="scripted")
    p.add_argument("--model", type=Path, help="--engine hf: model directory (default: the tests' tiny Llama); "
                   "with --engine scripted only its tokenizer is used")
    p.add_argument("--max-new-tokens", type=int, default=32, help="--engine hf: tokens per turn")
    p.add_argument("--max-turns", type=int, default=2, help="--engine hf: agent.max_turns")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "rollout_bench.json")
    args = p.parse_args(argv)
    for path in (args.corpus, args.questions):
        if not path.is_file():
            raise SystemExit(f"rollout_bench: {path} not found (see ../shared/data/README.md)")

    model_dir = args.model
    if args.engine == "hf" and model_dir is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_model import make_tiny_model

        model_dir = make_tiny_model(CACHE / "tiny_model")
    if model_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_model import make_tokenizer

        tokenizer = make_tokenizer()

    items = load_items(args.questions, args.corpus, args.n)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server on kill/timeout
    proc, url = (None, args.url) if args.url else start_server(args.corpus)
    try:
        results = {mode: run_mode(mode, items, tokenizer, url, args, model_dir) for mode in ("single", "multi")}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
    print(f"{len(items)} questions, engine={args.engine}, median of {args.repeats} runs")
    print(f"{'mode':7} {'req/turn':>14} {'requests':>8} {'queries':>7} {'turns':>5} {'total s':>8} "
          f"{'engine s':>8} {'retr s':>7} {'agent s':>7} {'agent %':>7} {'recall':>6}")
    for mode, r in results.items():
        print(f"{mode:7} {str(r['requests_per_turn']):>14} {r['requests']:>8} {r['queries_sent']:>7} "
              f"{r['turns_mean']:>5.2f} {r['total_s']:>8.3f} {r['generate_s']:>8.3f} {r['retrieve_s']:>7.3f} "
              f"{r['overhead_s']:>7.3f} {100 * r['overhead_share']:>6.1f}% {r['evidence_recall']:>6.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"engine": args.engine, "n": len(items), "modes": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
