"""Agent rollouts: sync vs async (per-trajectory) rollouts under retrieval latency, and single- vs
multi-query mode.

    python -m scripts.bench.rollout_bench [--compare rollouts|modes] [--corpus ../shared/data/hotpotqa_closed/corpus.jsonl] \
        [--questions ../shared/data/hotpotqa_closed/test.jsonl] [--url URL]
        rollouts: [--model smollm2|tiny|DIR] [--trajectories 16 64] [--latencies-ms 50 100 200] [--think-tokens 32]
                  [--mode single|multi] [--max-obs-length N] [--threads N]
        modes:    [--n 32] [--repeats 3] [--engine scripted|hf] [--model DIR]

Retrieval is real in both: BM25 over the corpus, served by start_retrieval.py on loopback (started
here unless --url is given; the index is cached under .cache/rollout_bench/).

`--compare rollouts` (the default) measures trajectories per second of `rollout.mode=sync` (the batch
GenerationManager on HFRollout: each turn waits for the batch's slowest row, then one retrieval
request for all rows) and `rollout.mode=async` (AsyncSearchAgent on HFServer: every trajectory on
its own, one request per searching trajectory), side by side in one run, for each number of
trajectories and each retrieval latency. The latency is added per request by a delaying proxy in
front of the server (a process of this bench; the server stays as deployed). The policy is the
model thinking, then a script acting: each turn the model generates up to --think-tokens tokens
(greedy, stopping at eos or an action's closing tag, as a policy does), then the question's scripted
action follows (its next search, or the answer), because an untrained model does not search; the
generation cost is the model's, the turns and searches are the script's. Both paths see the same
model and tokens, so their trajectories should be the same (printed: the share that is). Also
printed: the share of the sync rollout spent waiting for retrieval, the most that async can hide
(beyond that, its gain is the engine's: rows leave the batch when they finish).

`--compare modes` asks, per question, the question itself and the title of its first supporting
passage: single mode in two turns of one query each, multi mode in one turn of two queries; then it
answers. Reported per mode (median over --repeats): retrieval requests per turn, queries sent,
wall time split into engine (generate), retrieval and the manager's own work (parsing, tokenizing,
batching: total - generate - retrieval), and the recall of supporting passages in what was
retrieved. With `--engine hf` the same manager drives HFRollout on a model (default: the tests'
tiny random Llama), so the overhead share is measured against real generation (that policy never
searches).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class _DelayHandler(BaseHTTPRequestHandler):
    """Forwards each request to the server after the proxy's latency."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.server.latency)
        self._answer(self.server.client.post(self.server.target + self.path, content=body,
                                             headers={"Content-Type": "application/json"}))

    def do_GET(self) -> None:
        self._answer(self.server.client.get(self.server.target + self.path))

    def _answer(self, response) -> None:
        self.send_response(response.status_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(response.content)))
        self.end_headers()
        self.wfile.write(response.content)

    def log_message(self, *args) -> None:
        pass


def _serve_delayed(target: str, latency_s: float, port) -> None:
    import httpx

    server = ThreadingHTTPServer(("127.0.0.1", 0), _DelayHandler)
    server.daemon_threads = True
    server.target, server.latency = target, latency_s
    server.client = httpx.Client(timeout=60.0, limits=httpx.Limits(max_connections=None))
    port.value = server.server_address[1]
    server.serve_forever()


@contextmanager
def delaying_proxy(retrieve_url: str, latency_s: float):
    """The /retrieve URL of a proxy (its own process, so its threads share no interpreter with the
    rollout) that answers every request `latency_s` seconds later than the server at `retrieve_url`."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    port = context.Value("i", 0)
    target = retrieve_url[: -len("/retrieve")]
    proc = context.Process(target=_serve_delayed, args=(target, latency_s, port), daemon=True)
    proc.start()
    try:
        deadline = time.time() + 60
        while not port.value:
            if time.time() > deadline or not proc.is_alive():
                raise SystemExit("rollout_bench: the delaying proxy did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port.value}/retrieve"
    finally:
        proc.terminate()
        proc.join(timeout=10)


class ScriptActions:
    """The bench's policy: the model thinks (up to `think_tokens` generated tokens per turn), then the
    script's next action follows (log-prob 0: the script, not the model, wrote it)."""

    def __init__(self, script, think_tokens: int):
        self.script, self.think_tokens = script, think_tokens

    def after(self, context: list[int]) -> list[int]:
        """The token ids of the script's next action after `context` (token ids)."""
        text = self.script.tokenizer.decode(context, skip_special_tokens=False)
        return self.script.tokenizer.encode(self.script.next_text(text), add_special_tokens=False)


class ThinkThenAct:
    """ScriptActions on the batch engine's `generate` (the sync path)."""

    def __init__(self, generate, actions: ScriptActions):
        self.generate, self.actions = generate, actions

    def __call__(self, prompts):
        import torch

        from rag_r1.llm_agent.generation import response_log_prob_lists
        from verl.workers.rollout.base import assemble_output, pad_responses, prompt_token_lists, response_token_lists

        request = prompts.select(batch_keys=["input_ids", "attention_mask", "position_ids"], non_tensor_batch_keys=[])
        request.meta_info = {**prompts.meta_info, "max_new_tokens": self.actions.think_tokens}
        thinking = self.generate(request)
        turns, log_probs = [], []
        for context, tokens, row_log_probs in zip(prompt_token_lists(prompts), response_token_lists(thinking),
                                                  response_log_prob_lists(thinking)):
            action = self.actions.after(context + tokens)
            turns.append(tokens + action)
            log_probs.append(row_log_probs + [0.0] * len(action))
        width = int(prompts.meta_info["max_new_tokens"])
        output = assemble_output(prompts, *pad_responses(turns, width, self.actions.script.tokenizer.pad_token_id))
        output.batch["rollout_log_probs"] = torch.tensor([row + [0.0] * (width - len(row)) for row in log_probs])
        return output


class ThinkThenActServer:
    """ScriptActions on a rollout server (the async path)."""

    def __init__(self, server, actions: ScriptActions):
        self.server, self.actions = server, actions

    async def generate(self, request_id: str, prompt_ids: list[int], params):
        from verl.workers.rollout.server import GenerationOutput

        thinking = await self.server.generate(request_id, prompt_ids,
                                              replace(params, max_new_tokens=self.actions.think_tokens))
        action = self.actions.after(list(prompt_ids) + thinking.token_ids)
        return GenerationOutput(thinking.token_ids + action, thinking.log_probs + [0.0] * len(action), "stop")


def load_model(name: str) -> Path:
    """The checkpoint directory of --model: smollm2 (converted once, cached), tiny (the tests' random
    Llama) or a directory."""
    if name == "smollm2":
        from rag_r1.models.smollm2 import convert

        return convert()
    if name == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_model import make_tiny_model

        return make_tiny_model(CACHE / "tiny_model")
    return Path(name)


def run_rollout(path: str, model, tokenizer, actions: ScriptActions, prompts, url: str, config,
                max_num_seqs: int | None = None):
    """(seconds, rows, stats) of one rollout of `prompts` in `path` (sync | async), greedy, with at most
    `max_num_seqs` trajectories decoded at once (None: all of them): sync rolls the prompts out in
    batches of that many, one after the other; async gives its server that many rows, and a trajectory
    takes a row as one leaves."""
    from rag_r1.llm_agent.async_agent import AsyncSearchAgent
    from rag_r1.llm_agent.generation import GenerationManager, RolloutStats, TurnRules
    from rag_r1.llm_agent.tool_formats import TagFormat
    from rag_r1.search.async_client import AsyncRetrievalClient
    from rag_r1.search.client import RetrievalClient
    from verl.trainer.config import rollout_config
    from verl.workers.rollout.hf_rollout import HFRollout
    from verl.workers.rollout.hf_server import HFServer
    from verl.workers.rollout.server import SamplingSettings

    cap = max_num_seqs or len(prompts)
    start = time.perf_counter()
    if path == "sync":
        engine = HFRollout(model, tokenizer, rollout_config(response_length=config.max_response_length, do_sample=False))
        rows, stats = [], RolloutStats()
        with RetrievalClient(url) as client:
            manager = GenerationManager(ThinkThenAct(engine.generate_sequences, actions), tokenizer, client, config)
            for first in range(0, len(prompts), cap):
                batch_rows, batch_stats = manager.run(prompts[first:first + cap], {"do_sample": False})
                rows += batch_rows
                stats = added(stats, batch_stats)
        return time.perf_counter() - start, rows, stats
    server = HFServer(model, tokenizer, max_num_seqs=cap)
    params = SamplingSettings(config.max_response_length, do_sample=False, temperature=1.0, top_p=1.0, top_k=-1,
                              stop=TagFormat.stop)

    async def rollout():
        async with AsyncRetrievalClient(url) as client:
            agent = AsyncSearchAgent(ThinkThenActServer(server, actions), client, TurnRules(tokenizer, config))
            return await agent.run(prompts, params)

    try:
        rows, stats = asyncio.run(rollout())
    finally:
        server.close()
    return time.perf_counter() - start, rows, stats


def added(total, part):
    """Two RolloutStats of rollouts run one after the other, summed field by field (per-turn counts by turn)."""
    turns = [a + b for a, b in itertools.zip_longest(total.requests_per_turn, part.requests_per_turn, fillvalue=0)]
    return replace(total, **{f.name: getattr(total, f.name) + getattr(part, f.name) for f in fields(total)
                             if f.name != "requests_per_turn"}, requests_per_turn=turns)


def compare_rollouts(items, url: str, args: argparse.Namespace) -> dict:
    """Trajectories/s of sync and async rollouts for every (trajectories, latency), side by side."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rag_r1.llm_agent.config import AgentConfig
    from rag_r1.llm_agent.prompts import format_question, user_content
    from rag_r1.llm_agent.scripted import ScriptedPolicy

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = load_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    scripts = scripts_for(items, args.mode)
    actions = ScriptActions(ScriptedPolicy(tokenizer, scripts), args.think_tokens)
    longest_action = max(len(tokenizer.encode(text, add_special_tokens=False)) for texts in scripts.values()
                         for text in texts)
    config = AgentConfig(max_prompt_length=8192, max_start_length=2048,
                         max_response_length=args.think_tokens + longest_action, mode=args.mode,
                         max_obs_length=args.max_obs_length or AgentConfig.max_obs_length)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": user_content(i["question"], args.mode)}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
               for i in items]
    assert all(format_question(i["question"]) in tokenizer.decode(p) for i, p in zip(items, prompts))
    for path in ("sync", "async"):  # warm-up: first forwards allocate
        run_rollout(path, model, tokenizer, actions, prompts[:2], url, config)
    results = []
    for n in args.trajectories:
        for latency_ms in args.latencies_ms:
            with delaying_proxy(url, latency_ms / 1000) as delayed:
                runs = {path: run_rollout(path, model, tokenizer, actions, prompts[:n], delayed, config,
                                          args.max_num_seqs) for path in ("sync", "async")}
            (sync_s, sync_rows, sync_stats), (async_s, async_rows, async_stats) = runs["sync"], runs["async"]
            same = sum(a.response == b.response for a, b in zip(async_rows, sync_rows)) / n
            result = {"trajectories": n, "latency_ms": latency_ms,
                      "sync_traj_per_s": n / sync_s, "async_traj_per_s": n / async_s, "speedup": sync_s / async_s,
                      "sync_s": sync_s, "async_s": async_s,
                      # what async could hide at most: the time sync spent waiting for retrieval
                      "sync_retrieval_share": sync_stats.retrieve_s / sync_stats.total_s,
                      "sync_requests": sync_stats.retrieval_requests, "async_requests": async_stats.retrieval_requests,
                      "turns_mean": statistics.mean(r.turns for r in async_rows),
                      "generated_tokens_mean": statistics.mean(len(r.response) - sum(r.info_mask) for r in async_rows),
                      "identical_trajectories": same}
            results.append(result)
            print(f"{n:>5} {latency_ms:>7} {result['sync_traj_per_s']:>11.2f} {result['async_traj_per_s']:>12.2f} "
                  f"{result['speedup']:>9.2f}x {100 * result['sync_retrieval_share']:>9.1f}% "
                  f"{result['turns_mean']:>5.2f} {result['sync_requests']:>5}/{result['async_requests']:<5} "
                  f"{same:>9.2f}", flush=True)
    return {"compare": "rollouts", "model": str(model_dir), "mode": args.mode, "think_tokens": args.think_tokens,
            "max_num_seqs": args.max_num_seqs,
            "torch_threads": torch.get_num_threads(), "results": results}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", choices=["rollouts", "modes"], default="rollouts")
    p.add_argument("--corpus", type=Path, default=SHARED / "corpus.jsonl")
    p.add_argument("--questions", type=Path, default=SHARED / "test.jsonl")
    p.add_argument("--url", help="an already running retrieval server over --corpus")
    p.add_argument("--model", help="rollouts: smollm2 (default), tiny or a checkpoint directory; modes with "
                   "--engine hf: a directory (default: the tests' tiny Llama); with --engine scripted only its "
                   "tokenizer is used")
    p.add_argument("--trajectories", type=int, nargs="+", default=[16, 64], help="rollouts: trajectories per rollout")
    p.add_argument("--latencies-ms", type=int, nargs="+", default=[50, 100, 200],
                   help="rollouts: latency added to every retrieval request")
    p.add_argument("--max-num-seqs", type=int, help="rollouts: trajectories decoded at once (default: all); each "
                   "holds its keys/values in memory, and 64 at once outgrew 24 GB with SmolLM2")
    p.add_argument("--think-tokens", type=int, default=32, help="rollouts: tokens the model generates per turn at most")
    p.add_argument("--mode", choices=["single", "multi"], default="single",
                   help="rollouts: the agent's mode (single: two searches per question, multi: one)")
    p.add_argument("--max-obs-length", type=int, help="rollouts: agent.max_obs_length (default: the agent's)")
    p.add_argument("--threads", type=int, help="rollouts: torch's intra-op threads (default: torch's, one per core; "
                   "on a busy machine 1 keeps the threads from waiting on each other)")
    p.add_argument("--n", type=int, default=32, help="modes: questions (one trajectory each)")
    p.add_argument("--repeats", type=int, default=3, help="modes: runs per mode (the median is reported)")
    p.add_argument("--engine", choices=["scripted", "hf"], default="scripted", help="modes: the policy")
    p.add_argument("--max-new-tokens", type=int, default=32, help="modes --engine hf: tokens per turn")
    p.add_argument("--max-turns", type=int, default=2, help="modes --engine hf: agent.max_turns")
    p.add_argument("--out", type=Path, help="JSON report (default: results/bench/rollout_bench[_modes].json)")
    args = p.parse_args(argv)
    for path in (args.corpus, args.questions):
        if not path.is_file():
            raise SystemExit(f"rollout_bench: {path} not found (see ../shared/data/README.md)")
    n = max(args.trajectories) if args.compare == "rollouts" else args.n
    items = load_items(args.questions, args.corpus, n)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server on kill/timeout
    proc, url = (None, args.url) if args.url else start_server(args.corpus)
    try:
        if args.compare == "rollouts":
            print(f"sync vs async rollouts, {args.mode} mode, model {args.model or 'smollm2'}, "
                  f"up to {args.think_tokens} generated tokens per turn, greedy, "
                  f"{args.max_num_seqs or 'all'} trajectories decoded at once")
            print(f"{'traj':>5} {'lat ms':>7} {'sync traj/s':>11} {'async traj/s':>12} {'async/sync':>10} "
                  f"{'sync retr':>10} {'turns':>5} {'requests':>11} {'identical':>9}")
            args.model = args.model or "smollm2"
            report = compare_rollouts(items, url, args)
        else:
            report = compare_modes(items, url, args)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
    out = args.out or ROOT / "results" / "bench" / ("rollout_bench.json" if args.compare == "rollouts"
                                                     else "rollout_bench_modes.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return report


def compare_modes(items, url: str, args: argparse.Namespace) -> dict:
    model_dir = None if args.model is None else Path(args.model)
    if args.engine == "hf" and model_dir is None:
        model_dir = load_model("tiny")
    if model_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_model import make_tokenizer

        tokenizer = make_tokenizer()
    results = {mode: run_mode(mode, items, tokenizer, url, args, model_dir) for mode in ("single", "multi")}
    print(f"{len(items)} questions, engine={args.engine}, median of {args.repeats} runs")
    print(f"{'mode':7} {'req/turn':>14} {'requests':>8} {'queries':>7} {'turns':>5} {'total s':>8} "
          f"{'engine s':>8} {'retr s':>7} {'agent s':>7} {'agent %':>7} {'recall':>6}")
    for mode, r in results.items():
        print(f"{mode:7} {str(r['requests_per_turn']):>14} {r['requests']:>8} {r['queries_sent']:>7} "
              f"{r['turns_mean']:>5.2f} {r['total_s']:>8.3f} {r['generate_s']:>8.3f} {r['retrieve_s']:>7.3f} "
              f"{r['overhead_s']:>7.3f} {100 * r['overhead_share']:>6.1f}% {r['evidence_recall']:>6.3f}")
    return {"compare": "modes", "engine": args.engine, "n": len(items), "modes": results}


if __name__ == "__main__":
    main()
