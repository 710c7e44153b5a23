"""The per-trajectory rollout: every trajectory runs its own turns, many of them in flight at once.

    agent = AsyncSearchAgent(servers, retriever, rules)
    rows, stats = await agent.run(prompts, SamplingSettings(...))

A trajectory generates a turn on the rollout servers (`servers.generate(request_id, context,
params)`, the contract of verl/workers/rollout/server.py: token ids in, token ids and log-probs
out; all turns of a trajectory share one request id, so its server continues from the keys/values
it cached), applies the turn rules (generation.TurnRules, the same as the batch rollout's) and,
when it searches, sends ITS queries in one retrieval request and appends the observation; until it
answers or reaches the turn limit. A trajectory waiting for retrieval holds up no other: the
servers batch whatever requests are in flight. The tokens the policy sampled are kept as the
server returned them, never decoded and re-encoded.

The rows and RolloutStats are the batch rollout's, so SearchAgentLoop builds the same batch and
metrics from either; only the retrieval traffic differs by design (one request per searching
trajectory and turn, instead of one per turn for the whole batch).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import replace
from typing import Protocol

from rag_r1.llm_agent.generation import RolloutStats, Trajectory, TurnRules
from rag_r1.llm_agent.tool_formats import Action
from verl.workers.rollout.server import GenerationOutput, SamplingSettings


class RolloutServers(Protocol):
    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingSettings) -> GenerationOutput: ...


class AsyncRetriever(Protocol):
    async def retrieve(self, queries: list[str], topk: int) -> list[list[dict]]: ...


class ThreadedRetriever:
    """A blocking retriever (RetrievalClient, a test's scripted one) for the per-trajectory rollout:
    each request runs in a worker thread, so the event loop keeps serving the other trajectories."""

    def __init__(self, retriever):
        self.retriever = retriever

    async def retrieve(self, queries: list[str], topk: int) -> list[list[dict]]:
        return await asyncio.to_thread(self.retriever.retrieve, queries, topk)


def request_seed(base: int, row: int, turn: int) -> int:
    """The sampling seed of one turn of one row: distinct for every (row < 104729, turn) of a
    rollout whose seed is `base` (7919 and 104729 are primes)."""
    return (base + row * 7919 + turn * 104729) % 2**31


class BusyClock:
    """Wall time during which some generation was in flight, and during which retrieval was in
    flight while no generation was: with many trajectories in flight the two overlap, and what
    overlaps counts as generation time (the retrieval it hid cost nothing)."""

    def __init__(self):
        self.in_flight: Counter[str] = Counter()
        self.spent: defaultdict[str, float] = defaultdict(float)
        self.since = time.perf_counter()

    @contextmanager
    def busy(self, kind: str):
        self._tick()
        self.in_flight[kind] += 1
        try:
            yield
        finally:
            self._tick()
            self.in_flight[kind] -= 1

    def _tick(self) -> None:
        now = time.perf_counter()
        elapsed, self.since = now - self.since, now
        for kind in ("generate", "retrieve"):
            if self.in_flight[kind]:
                self.spent[kind] += elapsed
                return


class AsyncSearchAgent:
    def __init__(self, servers: RolloutServers, retriever: AsyncRetriever, rules: TurnRules):
        self.servers, self.retriever, self.rules = servers, retriever, rules

    async def run(self, prompts: list[list[int]], params: SamplingSettings) -> tuple[list[Trajectory], RolloutStats]:
        """Roll out every prompt (unpadded token lists) at once. A sampled `params` with a seed is the
        rollout's base seed: each turn of each row then samples with its own (`request_seed`), so
        a rollout is reproducible whatever order the servers batch its requests in."""
        start = time.perf_counter()
        stats, clock = RolloutStats(), BusyClock()
        rollout_id = uuid.uuid4().hex
        async with asyncio.TaskGroup() as group:  # one failing trajectory cancels the others
            tasks = [group.create_task(self._trajectory(f"{rollout_id}-{i}", i, prompt, params, stats, clock))
                     for i, prompt in enumerate(prompts)]
        stats.total_s = time.perf_counter() - start
        stats.generate_s, stats.retrieve_s = clock.spent["generate"], clock.spent["retrieve"]
        return [task.result() for task in tasks], stats

    async def _trajectory(self, request_id: str, index: int, prompt: list[int], params: SamplingSettings,
                          stats: RolloutStats, clock: BusyClock) -> Trajectory:
        row = Trajectory(prompt=list(prompt))
        max_turns = self.rules.config.max_turns
        for turn in range(max_turns + 1):
            turn_params = params
            if params.seed is not None and not params.greedy:
                turn_params = replace(params, seed=request_seed(params.seed, index, turn))
            with clock.busy("generate"):
                output = await self.servers.generate(request_id, self.rules.context(row), turn_params)
            action = self.rules.after_turn(row, output.token_ids, output.log_probs, final=turn == max_turns)
            if action is not None:
                await self._search(row, action, turn, stats, clock)
            if row.done:
                break
        return row

    async def _search(self, row: Trajectory, action: Action, turn: int, stats: RolloutStats, clock: BusyClock) -> None:
        """One retrieval request for the row's queries (each distinct one once), then the observation."""
        distinct = list(dict.fromkeys(action.queries))
        with clock.busy("retrieve"):
            hits = await self.retriever.retrieve(distinct, self.rules.depth(row, action))
        stats.count_request(turn, len(distinct), len(action.queries))
        self.rules.observe(row, action, dict(zip(distinct, hits, strict=True)))
