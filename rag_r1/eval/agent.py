"""The evaluation solver: questions in, what the search agent did for each out.

It drives the same GenerationManager as training (prompt from `rag_r1.llm_agent.prompts`,
chat-templated as in docs/architecture.md), with a local HFRollout as the engine and the
retrieval server behind RetrievalClient.
"""
from __future__ import annotations

import argparse
from itertools import groupby
from pathlib import Path

from rag_r1.llm_agent.config import MODES, AgentConfig
from rag_r1.llm_agent.generation import GenerationManager, Trajectory
from rag_r1.reward.qa_em import extract_solution

# The paper evaluates with up to 5 retrieval rounds, one more than it trains with
# (AgentConfig.max_turns); every other agent setting defaults to AgentConfig's.
EVAL_MAX_TURNS = 5


def policy_text(row: Trajectory, tokenizer) -> str:
    """What the policy itself wrote: the response with every info-masked span (retrieved blocks,
    corrective notes) left out. The notes quote the tags ("... between <answer> and </answer>"),
    so an answer read from the full text could be the word "and"."""
    spans = groupby(zip(row.response, row.info_mask), key=lambda pair: pair[1])
    return "".join(tokenizer.decode([t for t, _ in span], skip_special_tokens=True) for masked, span in spans
                   if not masked)


def trajectory_result(row: Trajectory, tokenizer) -> dict:
    """The solver fields of one finished trajectory (see rag_r1.eval.runner.SOLVER_KEYS)."""
    return {
        "text": tokenizer.decode(row.response, skip_special_tokens=True),
        "answer": extract_solution(policy_text(row, tokenizer)),
        "turns": row.turns,
        "searches": row.search_calls,
        "queries": row.queries,
        "retrieved": row.retrieved_ids,
        "tokens": len(row.info_mask) - sum(row.info_mask),  # generated tokens only
    }


class AgentSolver:
    def __init__(self, manager: GenerationManager, tokenizer, sampling: dict):
        self.manager = manager
        self.tokenizer = tokenizer
        self.sampling = sampling  # meta_info for every generate call: do_sample, temperature, top_p

    def prompt_ids(self, question: str) -> list[int]:
        content = self.manager.mode.user_content(question)
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, batch: list[dict]) -> list[dict]:
        rows, _ = self.manager.run([self.prompt_ids(q["question"]) for q in batch], self.sampling)
        return [trajectory_result(row, self.tokenizer) for row in rows]


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say which model runs the agent on which questions, and how (`build_solver` reads them;
    `python -m rag_r1.eval` and `rag_r1.eval.frontier` share them)."""
    parser.add_argument("--model", required=True, help="HF checkpoint directory (or hub name)")
    parser.add_argument("--questions", required=True, type=Path, help="FlashRAG JSONL or veRL parquet")
    parser.add_argument("--retrieval-url", required=True, nargs="+",
                        help="retrieval server URL(s), e.g. http://127.0.0.1:8000/retrieve; several = replicas")
    parser.add_argument("--mode", required=True, choices=MODES, help="one query or several per search")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    parser.add_argument("--batch-size", type=int, default=8, help="trajectories the agent advances together")
    parser.add_argument("--max-turns", type=int, default=EVAL_MAX_TURNS,
                        help="retrieval rounds at most (default %(default)s, the paper's evaluation)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="generated tokens per turn at most")
    parser.add_argument("--topk", type=int, default=AgentConfig.topk, help="passages per query (default %(default)s)")
    parser.add_argument("--max-obs-length", type=int, default=AgentConfig.max_obs_length,
                        help="tokens of one <information> block at most, as agent.max_obs_length (default %(default)s)")
    parser.add_argument("--unseen-passages", action="store_true",
                        help="show each passage once per trajectory, as agent.unseen_passages")
    parser.add_argument("--max-prompt-length", type=int, default=8192,
                        help="tokens of the rolling context fed to each turn at most")
    parser.add_argument("--max-start-length", type=int, default=2048,
                        help="tokens of the initial prompt kept in the rolling context at most")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="with --sample")
    parser.add_argument("--top-p", type=float, default=1.0, help="with --sample")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (matters with --sample)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where the model runs; auto = cuda when one is visible")
    parser.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                        help="re-encode the whole context every turn instead of continuing from the KV cache")


def build_solver(args: argparse.Namespace) -> AgentSolver:
    """Model, tokenizer, HF engine, retrieval client and agent as the eval CLI's `args` say."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rag_r1.search.client import RetrievalClient
    from verl.trainer.config import rollout_config
    from verl.utils.attention import use_for_generation
    from verl.utils.distributed import resolve_device
    from verl.workers.rollout.hf_rollout import HFRollout

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:  # batches are padded; eos is never attended to as padding
        tokenizer.pad_token = tokenizer.eos_token
    device = resolve_device(args.device)
    model = use_for_generation(AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device))
    engine = HFRollout(model, tokenizer, rollout_config(response_length=args.max_new_tokens, do_sample=args.sample,
                                                             enable_prefix_caching=args.prefix_cache))
    config = AgentConfig(max_prompt_length=args.max_prompt_length, max_start_length=args.max_start_length,
                         max_response_length=args.max_new_tokens, mode=args.mode, max_turns=args.max_turns,
                         topk=args.topk, max_obs_length=args.max_obs_length, unseen_passages=args.unseen_passages)
    manager = GenerationManager(engine.generate_sequences, tokenizer, RetrievalClient(args.retrieval_url), config)
    sampling = {"do_sample": args.sample}
    if args.sample:
        sampling.update(temperature=args.temperature, top_p=args.top_p)
    return AgentSolver(manager, tokenizer, sampling)
