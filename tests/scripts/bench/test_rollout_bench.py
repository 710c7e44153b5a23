"""The rollout bench's fairness: its delaying proxy adds the latency and forwards the answer intact,
and the sync and async paths roll out the same trajectories (tiny model, a canned retrieval server)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.prompts import user_content
from rag_r1.llm_agent.scripted import ScriptedPolicy
from scripts.bench.rollout_bench import ScriptActions, delaying_proxy, run_rollout, scripts_for


class _Canned(BaseHTTPRequestHandler):
    """/retrieve: topk hits per query, `<query>#k`."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        result = [[{"document": {"id": f"{q}#{k}", "contents": f'"{q}"\nabout {q}'}, "score": 1.0}
                   for k in range(body["topk"])] for q in body["queries"]]
        answer = json.dumps({"result": result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def canned_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/retrieve"
    server.shutdown()


def test_the_proxy_answers_as_the_server_after_the_latency(canned_url):
    payload = {"queries": ["paris"], "topk": 1, "return_scores": True}
    with delaying_proxy(canned_url, 0.3) as delayed:
        start = time.perf_counter()
        answer = httpx.post(delayed, json=payload, timeout=30)
        waited = time.perf_counter() - start
    assert waited >= 0.3 and answer.json() == httpx.post(canned_url, json=payload).json()


def two_question_rollout(tiny_model_dir):
    """(model, tokenizer, actions, prompts, config) of a single-mode rollout over two questions."""
    items = [{"question": "who wrote hamlet", "title": "Hamlet", "golden_answers": ["Shakespeare"]},
             {"question": "where is the eiffel tower", "title": "Eiffel Tower", "golden_answers": ["Paris"]}]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    actions = ScriptActions(ScriptedPolicy(tokenizer, scripts_for(items, "single")), think_tokens=4)
    config = AgentConfig(max_prompt_length=8192, max_start_length=2048, max_response_length=256, mode="single",
                         max_obs_length=64, topk=1)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": user_content(i["question"], "single")}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
               for i in items]
    return model, tokenizer, actions, prompts, config


def test_the_sync_and_async_paths_roll_out_the_same_trajectories(canned_url, tiny_model_dir):
    model, tokenizer, actions, prompts, config = two_question_rollout(tiny_model_dir)
    _, sync_rows, sync_stats = run_rollout("sync", model, tokenizer, actions, prompts, canned_url, config)
    _, rows, stats = run_rollout("async", model, tokenizer, actions, prompts, canned_url, config)
    assert [r.response for r in rows] == [r.response for r in sync_rows]
    assert [r.turns for r in rows] == [3, 3] and [r.answered for r in rows] == [True, True]
    assert [r.retrieved_ids for r in rows] == [[["who wrote hamlet#0"], ["Hamlet#0"]],
                                               [["where is the eiffel tower#0"], ["Eiffel Tower#0"]]]
    # the model thought (4 tokens at most per turn), then the script acted
    text = tokenizer.decode(rows[0].response)
    assert "<search> who wrote hamlet </search>" in text and text.endswith("<answer> Shakespeare </answer>")
    assert sync_stats.retrieval_requests == 2 and stats.retrieval_requests == 4


def test_one_trajectory_at_a_time_rolls_out_the_same_trajectories(canned_url, tiny_model_dir):
    model, tokenizer, actions, prompts, config = two_question_rollout(tiny_model_dir)
    _, together, _ = run_rollout("sync", model, tokenizer, actions, prompts, canned_url, config)
    _, sync_rows, sync_stats = run_rollout("sync", model, tokenizer, actions, prompts, canned_url, config, max_num_seqs=1)
    _, rows, stats = run_rollout("async", model, tokenizer, actions, prompts, canned_url, config, max_num_seqs=1)
    assert [r.response for r in sync_rows] == [r.response for r in rows] == [r.response for r in together]
    # two batches of one, each searching in two turns: the stats of both, summed
    assert sync_stats.retrieval_requests == 4 and sync_stats.requests_per_turn == [2, 2, 0]
    assert sync_stats.total_s >= sync_stats.generate_s > 0
    assert stats.retrieval_requests == 4
