"""The base class of everything a worker group runs: one process, one rank."""
from __future__ import annotations

import os
import resource
import sys

import torch

from verl.single_controller.base.decorator import Dispatch, register
from verl.utils.distributed import init_process_group_from_env


class Worker:
    """Knows its rank and joins the group's torch.distributed process group on construction.

    The worker group sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the process
    environment; a subclass calls `super().__init__()` first and may then use collectives.
    `process_group_timeout_s` bounds each collective (None: torch's default).
    """

    def __init__(self, process_group_timeout_s: float | None = None):
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        # Ray starts workers with one intra-op thread; a node's cores are shared by its ranks instead
        # (worker groups on one node take turns, so each may use them all between its turns).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
        if "MASTER_ADDR" in os.environ:
            init_process_group_from_env(process_group_timeout_s)

    def ping(self) -> int:
        """Liveness and rank check used by the worker group after start-up."""
        return self.rank

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def peak_rss_bytes(self) -> int:
        """The most resident memory this worker process has held so far (benchmarks read it)."""
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The most resident memory this process has held so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB
