"""GenerationManager: the multi-turn rollout in which the policy thinks, searches, reads and answers.

Per turn, for every trajectory still running:
1. generate (stop at `</search>` or `</answer>`, at most `max_response_length` new tokens);
2. parse the action (`actions.parse_action`, queries by the mode);
3. ONE retrieval request for the queries of all rows (each distinct query once); with
   `unseen_passages` a search shows only passages its trajectory has not been shown yet;
4. append `"\\n<information>\\n" + results + "\\n</information>\\n"` (info_mask 1) after a search, a
   short corrective note (info_mask 1: the policy did not write it either) after a turn with no
   complete action; an answer ends the trajectory.
After `max_turns` turns every row still running gets one more turn whose searches are not run.

State is plain token lists per row (`Trajectory`); the engine sees one left-padded batch per turn
through verl's `build_prompt_batch` / `response_token_lists`. Beside each generated token the row
keeps the log-prob the engine sampled it with (`rollout_log_probs`; 0 on tokens the policy did not
write), which the trainer compares with its own.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from rag_r1.llm_agent.actions import parse_action
from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.modes import mode_of
from verl.protocol import DataProto
from verl.workers.rollout.base import build_prompt_batch, response_token_lists

STOP = ["</search>", "</answer>"]
INFO_OPEN, INFO_CLOSE = "\n<information>\n", "\n</information>\n"


def observation_budget(tokenizer, max_obs_length: int) -> int:
    """Tokens of results one `<information>` block of `max_obs_length` tokens holds: the rest is its
    two tags. The rollout cuts results to it, and so do the SFT builders."""
    tags = sum(len(tokenizer.encode(tag, add_special_tokens=False)) for tag in (INFO_OPEN, INFO_CLOSE))
    if max_obs_length - tags < 1:
        raise ValueError(f"agent.max_obs_length={max_obs_length} leaves no room inside the "
                         f"<information> tags ({tags} tokens)")
    return max_obs_length - tags


def shown_hits(query_hits: list[list[dict]], topk: int, seen: set[str] | None = None) -> list[list[dict]]:
    """The passages one search shows, per query: each query's first `topk` hits; or, given `seen` (the
    ids the trajectory was shown before, updated here), the first `topk` it has not been shown yet,
    passages of the search's earlier queries included. The hits must then reach deep enough
    (`unseen_depth`). The rollout and the SFT builders both show passages through this."""
    if seen is None:
        return [hits[:topk] for hits in query_hits]
    shown = []
    for hits in query_hits:
        fresh = [hit for hit in hits if hit["id"] not in seen][:topk]
        seen.update(hit["id"] for hit in fresh)
        shown.append(fresh)
    return shown


def unseen_depth(topk: int, seen: int, queries: int) -> int:
    """Hits to retrieve per query so that `shown_hits` still finds `topk` unseen ones for each of a
    search's `queries` after `seen` passages were shown."""
    return seen + topk * queries


class Retriever(Protocol):
    def retrieve(self, queries: list[str], topk: int) -> list[list[dict]]: ...


@dataclass
class Trajectory:
    """One row's rolling state and what it did (the per-trajectory counts of the batch)."""

    prompt: list[int]  # initial prompt tokens, unpadded
    response: list[int] = field(default_factory=list)  # everything after the prompt
    info_mask: list[int] = field(default_factory=list)  # 1 per response token the policy did not write
    log_probs: list[float] = field(default_factory=list)  # per response token: sampled log-prob, 0 if not the policy's
    done: bool = False
    turns: int = 0  # generation calls this row took part in
    search_calls: int = 0  # <information> blocks received
    valid_actions: int = 0  # turns ending in a complete search (with queries) or answer
    answered: bool = False
    obs_truncated: int = 0  # <information> blocks cut to max_obs_length
    queries: list[list[str]] = field(default_factory=list)  # per search round
    retrieved_ids: list[list[str]] = field(default_factory=list)  # per search round, all queries' hits

    def append_generated(self, tokens: list[int], log_probs: list[float]) -> None:
        """Tokens the policy sampled, with the log-probs it sampled them with."""
        if len(log_probs) != len(tokens):
            raise ValueError(f"{len(tokens)} generated tokens with {len(log_probs)} log-probs")
        self.response.extend(tokens)
        self.info_mask.extend([0] * len(tokens))
        self.log_probs.extend(log_probs)

    def append_observation(self, tokens: list[int]) -> None:
        """Tokens the policy did not write (retrieved blocks, notes): info_mask 1, log-prob 0."""
        self.response.extend(tokens)
        self.info_mask.extend([1] * len(tokens))
        self.log_probs.extend([0.0] * len(tokens))


@dataclass
class RolloutStats:
    """Wall time split of one `run`, and the retrieval traffic it caused."""

    generate_s: float = 0.0
    retrieve_s: float = 0.0
    total_s: float = 0.0
    retrieval_requests: int = 0
    queries_sent: int = 0  # distinct queries over all requests
    queries_asked: int = 0  # before de-duplication
    requests_per_turn: list[int] = field(default_factory=list)


class GenerationManager:
    def __init__(self, generate: Callable[[DataProto], DataProto], tokenizer, retriever: Retriever,
                 config: AgentConfig):
        self.generate = generate
        self.tokenizer = tokenizer
        self.retriever = retriever
        self.config = config
        self.mode = mode_of(config)
        self._open_ids = self._encode(INFO_OPEN)
        self._close_ids = self._encode(INFO_CLOSE)
        self._obs_budget = observation_budget(tokenizer, config.max_obs_length)
        self._note_ids = self._encode(self.mode.invalid_note)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def run(self, prompts: list[list[int]], meta: dict | None = None) -> tuple[list[Trajectory], RolloutStats]:
        """Roll out every prompt (unpadded token lists); `meta` holds the sampling settings."""
        start = time.perf_counter()
        rows = [Trajectory(prompt=list(p)) for p in prompts]
        stats = RolloutStats()
        for turn in range(self.config.max_turns + 1):
            active = [r for r in rows if not r.done]
            if not active:
                break
            searching = self._generate_turn(active, meta or {}, stats, final=turn == self.config.max_turns)
            requests_before = stats.retrieval_requests
            if searching:
                self._search(searching, stats)
            stats.requests_per_turn.append(stats.retrieval_requests - requests_before)
        stats.total_s = time.perf_counter() - start
        return rows, stats

    def _context(self, row: Trajectory) -> list[int]:
        """What the policy sees: the prompt's last `max_start_length` tokens (the question and the
        assistant header sit at its end), then as much of the latest response as fits."""
        start = row.prompt[-self.config.max_start_length:]
        room = self.config.max_prompt_length - len(start)
        return start + (row.response[-room:] if room > 0 and row.response else [])

    def _generate_turn(self, active: list[Trajectory], meta: dict, stats: RolloutStats,
                       final: bool) -> list[tuple[Trajectory, list[str]]]:
        """Generate one turn for `active`; return the rows that asked to search, with their queries."""
        batch = build_prompt_batch([self._context(r) for r in active], self.tokenizer.pad_token_id)
        batch.meta_info = {**meta, "max_new_tokens": self.config.max_response_length, "stop": list(STOP)}
        tick = time.perf_counter()
        output = self.generate(batch)
        stats.generate_s += time.perf_counter() - tick
        searching = []
        turns = response_token_lists(output)
        log_probs = response_log_prob_lists(output)
        texts = self.tokenizer.batch_decode(turns, skip_special_tokens=True)
        for row, tokens, token_log_probs, text in zip(active, turns, log_probs, texts, strict=True):
            row.append_generated(tokens, token_log_probs)
            row.turns += 1
            action, content = parse_action(text)
            queries = self.mode.queries_of(content) if action == "search" else []
            if action == "answer":
                row.valid_actions += 1
                row.answered = row.done = True
            elif queries:
                row.valid_actions += 1
                if final:  # the last turn only gives a chance to answer; its searches are not run
                    row.done = True
                else:
                    searching.append((row, queries))
            elif final:
                row.done = True
            else:
                row.append_observation(self._note_ids)
        return searching

    def _search(self, searching: list[tuple[Trajectory, list[str]]], stats: RolloutStats) -> None:
        """One retrieval request for every query of every searching row, each distinct query once."""
        distinct = list(dict.fromkeys(q for _, queries in searching for q in queries))
        unseen = self.config.unseen_passages
        seen_of = [{pid for ids in row.retrieved_ids for pid in ids} if unseen else None for row, _ in searching]
        depth = self.config.topk if not unseen else max(
            unseen_depth(self.config.topk, len(seen), len(queries)) for seen, (_, queries) in zip(seen_of, searching))
        tick = time.perf_counter()
        hits = self.retriever.retrieve(distinct, depth)
        stats.retrieve_s += time.perf_counter() - tick
        stats.retrieval_requests += 1
        stats.queries_sent += len(distinct)
        stats.queries_asked += sum(len(q) for _, q in searching)
        hits_of = dict(zip(distinct, hits, strict=True))
        row_hits = [shown_hits([hits_of[q] for q in queries], self.config.topk, seen)
                    for (_, queries), seen in zip(searching, seen_of)]
        # One batched tokenizer call for all observations (fast tokenizers encode a batch in parallel).
        texts = [self.mode.format_observation(queries, h) for (_, queries), h in zip(searching, row_hits)]
        bodies = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        for (row, queries), query_hits, body in zip(searching, row_hits, bodies):
            if len(body) > self._obs_budget:
                # cut the results, never the tags, so the block always closes
                body = body[: self._obs_budget]
                row.obs_truncated += 1
            row.append_observation(self._open_ids + body + self._close_ids)
            row.search_calls += 1
            row.queries.append(queries)
            row.retrieved_ids.append([hit["id"] for hits in query_hits for hit in hits])


def response_log_prob_lists(output: DataProto) -> list[list[float]]:
    """Per row, the engine's `rollout_log_probs` of its real response tokens (aligned with
    `response_token_lists`)."""
    log_probs, mask = output.batch["rollout_log_probs"], output.batch["response_mask"].bool()
    return [row[keep].tolist() for row, keep in zip(log_probs, mask)]


def trajectory_metrics(rows: list[Trajectory], stats: RolloutStats) -> dict[str, float]:
    """`env/*` means over the batch and the retrieval traffic of one rollout (pure)."""
    n = max(len(rows), 1)
    searches = sum(r.search_calls for r in rows)
    turns = sum(r.turns for r in rows)
    return {
        "env/turns_mean": turns / n,
        "env/search_calls_mean": searches / n,
        "env/queries_per_call": sum(len(q) for r in rows for q in r.queries) / max(searches, 1),
        "env/valid_action_ratio": sum(r.valid_actions for r in rows) / max(turns, 1),
        "env/answered_ratio": sum(r.answered for r in rows) / n,
        "env/obs_truncated_ratio": sum(r.obs_truncated for r in rows) / max(searches, 1),
        "env/retrieval_requests": float(stats.retrieval_requests),
        "env/duplicate_query_ratio": 1.0 - stats.queries_sent / stats.queries_asked if stats.queries_asked else 0.0,
        "timing_s/agent_generate": stats.generate_s,
        "timing_s/agent_retrieve": stats.retrieve_s,
        "timing_s/agent_overhead": stats.total_s - stats.generate_s - stats.retrieve_s,
    }
