"""The multi-turn rollout in which the policy thinks, searches, reads and answers.

`TurnRules` is the agent's per-trajectory logic, the one both rollouts apply: after each generated
turn it reads the action (through the tool format, tool_formats.py), counts it, and says whether
the trajectory searches now; after a search it appends the observation. The rules:
1. generate (stop at the format's stop strings, at most `max_response_length` new tokens) from the
   rolling context (`context`);
2. an answer ends the trajectory; a search with at least one query runs (all of the turn's queries
   in one request); a turn without either gets the format's correction (info_mask 1), which says
   what was wrong (no action, a search without a query, a malformed tool call);
3. the observation shows each query's `topk` passages (with `unseen_passages` only passages the
   trajectory has not been shown yet), cut to `max_obs_length` tokens, info_mask 1;
4. after `max_turns` turns a trajectory still running gets one more turn whose searches are not run.

`GenerationManager` advances a batch turn by turn: one generate call for every running row, then
ONE retrieval request for the queries of all searching rows (each distinct query once). The
per-trajectory rollout (async_agent.py) advances each row on its own.

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

from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.modes import mode_of
# INFO_OPEN, INFO_CLOSE and observation_budget live with the tag format; the SFT builders import them from here
from rag_r1.llm_agent.tool_formats import INFO_CLOSE, INFO_OPEN, Action, TagFormat, ToolFormat, observation_budget
from verl.protocol import DataProto
from verl.workers.rollout.base import build_prompt_batch, response_token_lists

__all__ = ["INFO_CLOSE", "INFO_OPEN", "GenerationManager", "Retriever", "RolloutStats", "Trajectory", "TurnRules",
           "observation_budget", "response_log_prob_lists", "shown_hits", "trajectory_metrics", "unseen_depth"]


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
    search_calls: int = 0  # observations of a search received
    valid_actions: int = 0  # turns ending in a complete search (with queries) or answer
    answered: bool = False
    obs_truncated: int = 0  # observations cut to max_obs_length
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

    def seen_ids(self) -> set[str]:
        return {pid for ids in self.retrieved_ids for pid in ids}


@dataclass
class RolloutStats:
    """Wall time split of one rollout, and the retrieval traffic it caused. With trajectories in
    flight at once, `generate_s` is the time some generation ran and `retrieve_s` the time retrieval
    ran while no generation did, so the split still adds up to `total_s`."""

    generate_s: float = 0.0
    retrieve_s: float = 0.0
    total_s: float = 0.0
    retrieval_requests: int = 0
    queries_sent: int = 0  # distinct queries over all requests
    queries_asked: int = 0  # before de-duplication
    requests_per_turn: list[int] = field(default_factory=list)

    def count_request(self, turn: int, sent: int, asked: int) -> None:
        """One retrieval request of turn `turn` (0-based) with `sent` distinct of `asked` queries."""
        self.requests_per_turn += [0] * (turn + 1 - len(self.requests_per_turn))
        self.requests_per_turn[turn] += 1
        self.retrieval_requests += 1
        self.queries_sent += sent
        self.queries_asked += asked


class TurnRules:
    """The turn logic of one trajectory (module docstring), shared by every rollout: the batch one
    applies it row by row, the per-trajectory one trajectory by trajectory."""

    def __init__(self, tokenizer, config: AgentConfig, tool_format: ToolFormat | None = None):
        self.tokenizer = tokenizer
        self.config = config
        self.format = tool_format or TagFormat(tokenizer, mode_of(config), config.max_obs_length)

    def context(self, row: Trajectory) -> list[int]:
        """What the policy sees: the prompt's last `max_start_length` tokens (the question and the
        assistant header sit at its end), then as much of the latest response as fits."""
        start = row.prompt[-self.config.max_start_length:]
        room = self.config.max_prompt_length - len(start)
        return start + (row.response[-room:] if room > 0 and row.response else [])

    def after_turn(self, row: Trajectory, tokens: list[int], log_probs: list[float], final: bool) -> Action | None:
        """Record one generated turn; return the search to run now, or None (the row may be done)."""
        row.append_generated(tokens, log_probs)
        row.turns += 1
        action = self.format.parse(self.tokenizer.decode(tokens, skip_special_tokens=True))
        if action.kind == "answer":
            row.valid_actions += 1
            row.answered = row.done = True
            return None
        if action.queries:
            row.valid_actions += 1
            if final:  # the last turn only gives a chance to answer; its searches are not run
                row.done = True
                return None
            return action
        if final:
            row.done = True
        else:
            row.append_observation(self.format.correction(action, self._after_eos(row)))
        return None

    def depth(self, row: Trajectory, action: Action) -> int:
        """Hits to retrieve per query for `action`."""
        if not self.config.unseen_passages:
            return self.config.topk
        return unseen_depth(self.config.topk, len(row.seen_ids()), len(action.queries))

    def observe(self, row: Trajectory, action: Action, hits_of: dict[str, list[dict]]) -> None:
        """Append the observation of `action`'s search; `hits_of` maps each query to its hits."""
        seen = row.seen_ids() if self.config.unseen_passages else None
        shown = [shown_hits([hits_of[q] for q in call.queries], self.config.topk, seen) for call in action.calls]
        tokens, cut = self.format.observation(action, shown, self._after_eos(row))
        row.append_observation(tokens)
        row.obs_truncated += cut
        row.search_calls += 1
        row.queries.append(action.queries)
        row.retrieved_ids.append([hit["id"] for call_hits in shown for hits in call_hits for hit in hits])

    def _after_eos(self, row: Trajectory) -> bool:
        return bool(row.response) and row.response[-1] == self.tokenizer.eos_token_id


class GenerationManager:
    def __init__(self, generate: Callable[[DataProto], DataProto], tokenizer, retriever: Retriever,
                 config: AgentConfig, tool_format: ToolFormat | None = None):
        """`tool_format`: how the policy searches (default: RAG-R1's tags in `config.mode`)."""
        self.generate = generate
        self.tokenizer = tokenizer
        self.retriever = retriever
        self.config = config
        self.mode = mode_of(config)
        self.rules = TurnRules(tokenizer, config, tool_format)

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
            stats.requests_per_turn += [0] * (turn + 1 - len(stats.requests_per_turn))
            if searching:
                self._search(searching, stats, turn)
        stats.total_s = time.perf_counter() - start
        return rows, stats

    def _generate_turn(self, active: list[Trajectory], meta: dict, stats: RolloutStats,
                       final: bool) -> list[tuple[Trajectory, Action]]:
        """Generate one turn for `active`; return the rows that search now, with their actions."""
        batch = build_prompt_batch([self.rules.context(r) for r in active], self.tokenizer.pad_token_id)
        batch.meta_info = {**meta, "max_new_tokens": self.config.max_response_length, "stop": list(self.rules.format.stop)}
        tick = time.perf_counter()
        output = self.generate(batch)
        stats.generate_s += time.perf_counter() - tick
        searching = []
        for row, tokens, log_probs in zip(active, response_token_lists(output), response_log_prob_lists(output),
                                          strict=True):
            action = self.rules.after_turn(row, tokens, log_probs, final)
            if action is not None:
                searching.append((row, action))
        return searching

    def _search(self, searching: list[tuple[Trajectory, Action]], stats: RolloutStats, turn: int) -> None:
        """One retrieval request for every query of every searching row, each distinct query once."""
        distinct = list(dict.fromkeys(q for _, action in searching for q in action.queries))
        depth = max(self.rules.depth(row, action) for row, action in searching)
        tick = time.perf_counter()
        hits = self.retriever.retrieve(distinct, depth)
        stats.retrieve_s += time.perf_counter() - tick
        stats.count_request(turn, len(distinct), sum(len(action.queries) for _, action in searching))
        hits_of = dict(zip(distinct, hits, strict=True))
        for row, action in searching:
            self.rules.observe(row, action, hits_of)


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
