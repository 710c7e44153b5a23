"""The actor workers' rollout servers seen from the driver: `actor_rollout_ref.rollout.mode=async`.

Each actor worker hosts one server (verl/workers/rollout/server.py, the worker's `server_generate`
and `wake_server`). `ServerPool` is the one client a rollout loop talks to:

    pool.wake()                                    # before a rollout: new weights, once per version
    pool.weights_version                           # the version the servers then hold
    await pool.generate(request_id, prompt_ids, SamplingSettings(...))   # one turn of one trajectory
    pool.generate_batch(prompts)                   # a batch call (BaseRollout's contract) over the servers

A trajectory's turns all go to the server its first turn went to (its cached keys/values are
there); new trajectories go to the server with the fewest trajectories of the current rollout.
`generate_batch` lets a loop written for batches (SingleTurnLoop, the batch agent rollout) run
in async mode too: every row becomes its own request.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from omegaconf import DictConfig

from verl.protocol import DataProto
from verl.workers.rollout.base import assemble_output, pad_responses, prompt_token_lists
from verl.workers.rollout.server import GenerationOutput, SamplingSettings

ServerCall = Callable[[str, list[int], SamplingSettings], Awaitable[GenerationOutput]]


class ServerPool:
    def __init__(self, servers: list[ServerCall], wake: Callable[[], list[int]], rollout: DictConfig,
                 pad_token_id: int):
        """`servers`: one coroutine function per server; `wake`: readies every server for a rollout
        (collective across the workers) and returns the version of the weights each then holds;
        `rollout` (the rollout config) and `pad_token_id` shape `generate_batch`'s settings and output."""
        if not servers:
            raise ValueError("a server pool needs at least one server")
        self.servers, self._wake, self.rollout, self.pad_token_id = servers, wake, rollout, pad_token_id
        self.assigned: dict[str, int] = {}  # request id -> server index, for the current rollout
        self.load = [0] * len(servers)  # trajectories of the current rollout per server
        self._loop: asyncio.AbstractEventLoop | None = None
        self.weights_version: int | None = None  # what the servers hold since the last wake

    @classmethod
    def of_worker_group(cls, worker_group, rollout: DictConfig, pad_token_id: int) -> "ServerPool":
        """The servers of a Ray worker group's actors (`server_generate` on each worker's handle returns
        an ObjectRef, which asyncio awaits)."""
        calls = [_ray_call(worker) for worker in worker_group.workers]
        return cls(calls, worker_group.wake_server, rollout, pad_token_id)

    @classmethod
    def of_local_worker(cls, worker, rollout: DictConfig, pad_token_id: int) -> "ServerPool":
        """The server of an actor worker in this process (a one-rank group whose worker stands in for it:
        tests, benchmarks). Its blocking `server_generate` runs in threads, as a threaded actor's would."""
        executor = ThreadPoolExecutor(max_workers=rollout.max_num_seqs, thread_name_prefix="server-call")

        async def call(request_id: str, prompt_ids: list[int], params: SamplingSettings) -> GenerationOutput:
            return await asyncio.get_running_loop().run_in_executor(
                executor, worker.server_generate, request_id, prompt_ids, params)

        return cls([call], lambda: [worker.wake_server()], rollout, pad_token_id)

    def wake(self) -> None:
        """Ready every server for a rollout (the weights load once per version), note the version they
        hold and start a new assignment of trajectories."""
        versions = set(self._wake())
        if len(versions) != 1:  # the ranks update together: a difference is a broken weight sync
            raise RuntimeError(f"the rollout servers hold different weights versions: {sorted(versions)}")
        self.weights_version = versions.pop()
        self.assigned.clear()
        self.load = [0] * len(self.servers)

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingSettings) -> GenerationOutput:
        """One turn of trajectory `request_id` on its server."""
        if request_id not in self.assigned:
            index = min(range(len(self.servers)), key=self.load.__getitem__)
            self.assigned[request_id] = index
            self.load[index] += 1
        return await self.servers[self.assigned[request_id]](request_id, prompt_ids, params)

    def generate_batch(self, prompts: DataProto) -> DataProto:
        """BaseRollout.generate_sequences over the servers: each row is a request of its own."""
        meta = prompts.meta_info
        max_new_tokens = int(meta["max_new_tokens"]) if "max_new_tokens" in meta else self.rollout.response_length
        params = SamplingSettings.from_meta(self.rollout, meta, max_new_tokens)
        batch_id = uuid.uuid4().hex

        async def all_rows() -> list[GenerationOutput]:
            return await asyncio.gather(*(self.generate(f"{batch_id}-{i}", ids, params)
                                          for i, ids in enumerate(prompt_token_lists(prompts))))

        outputs = self.run(all_rows())
        output = assemble_output(prompts, *pad_responses([o.token_ids for o in outputs], max_new_tokens,
                                                         self.pad_token_id))
        log_probs = torch.zeros(output.batch["responses"].shape, dtype=torch.float32)
        for row, out in enumerate(outputs):
            log_probs[row, :len(out.log_probs)] = torch.tensor(out.log_probs, dtype=torch.float32)
        output.batch["rollout_log_probs"] = log_probs
        return output

    def run(self, coroutine):
        """Run `coroutine` on the pool's own event loop (kept across calls: clients opened on it stay
        usable) and return its result."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coroutine)


def _ray_call(worker) -> ServerCall:
    async def call(request_id: str, prompt_ids: list[int], params: SamplingSettings) -> GenerationOutput:
        return await worker.server_generate.remote(request_id, prompt_ids, params)

    return call


def actor_concurrency(rollout: DictConfig) -> int:
    """Method calls an actor worker runs at once: in async mode a blocking `server_generate` for each
    request its server may batch, and a few more so that control calls pass while they block; in
    sync mode one (every training method expects its calls in order)."""
    return rollout.max_num_seqs + 4 if rollout.mode == "async" else 1
