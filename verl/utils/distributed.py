"""torch.distributed set-up for worker processes and the few collectives the workers need."""
from __future__ import annotations

import ctypes
import functools
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group; 1 outside torch.distributed."""
    return dist.get_world_size() if dist.is_initialized() else 1


def node_ip() -> str:
    """This machine's address as other nodes of the Ray cluster see it."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # outside Ray (single-process use): loopback is all there is
        return "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# The worker group writes its pool's device here (trainer.device: "cuda" or "cpu"); unset means cpu.
DEVICE_ENV = "VERL_DEVICE"


def device() -> torch.device:
    """This worker's compute device, as configured, never guessed from the hardware: a CPU-configured
    worker stays on the CPU (and gloo) on a machine with GPUs. On GPU, Ray exposes exactly the GPU(s)
    assigned to an actor, so the first visible one is ours."""
    return torch.device("cuda", 0) if os.environ.get(DEVICE_ENV, "cpu") == "cuda" else torch.device("cpu")


def resolve_device(choice: str) -> str:
    """A `--device` / `trainer.device` choice as a torch device name: "auto" is "cuda" when a GPU is
    visible, else "cpu"; "cpu" and "cuda" stay as they are."""
    if choice != "auto":
        return choice
    return "cuda" if torch.cuda.is_available() else "cpu"


def process_group_backend(device_type: str) -> str:
    """The torch.distributed backend of a worker on `device_type` ("cpu" or "cuda").

    On GPU every group is mixed, as in veRL: CUDA tensors go over NCCL, CPU tensors over gloo.
    Offloaded FSDP shards (param_offload) keep their gradients on the CPU, so clipping reduces a
    CPU tensor; NCCL alone cannot, and the mixed group costs only gloo's connections at start-up.
    It is always mixed rather than only with offload, so that a CPU tensor reaching a collective
    (an offloaded state, a metric) works in every configuration instead of failing in some."""
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"


def init_process_group_from_env(timeout_s: float | None = None) -> None:
    """Join the group described by RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.

    `timeout_s` bounds every collective, a barrier included (None: torch's default, 10 minutes for
    NCCL): ranks wait in one while rank 0 gathers and writes a checkpoint."""
    if dist.is_initialized():
        return
    if device().type == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(
        backend=process_group_backend(device().type),
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=None if timeout_s is None else timedelta(seconds=timeout_s),
    )


def empty_device_cache() -> None:
    """Give the CUDA caching allocator's free blocks back between phases (training, gathering a
    checkpoint, generation), so the next phase, or another process on the GPU, can use them."""
    if device().type == "cuda":
        torch.cuda.empty_cache()


def return_freed_heap() -> None:
    """Give glibc's free heap pages back to the system (nothing where the C library has no
    malloc_trim). For a process whose phases run on different threads (a threaded actor in
    rollout.mode=async): glibc gives each thread its own heap and keeps what a phase freed there, so
    each phase landing on another thread would add its whole working set to the process. A process
    that runs its phases on one thread reuses its heap and gains nothing from this: it would only
    fault the pages in again."""
    if (trim := _malloc_trim()) is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over ranks (identity without a process group)."""
    return _all_reduce(values, dist.ReduceOp.SUM, mean=True)


def all_reduce_max(values: dict[str, float]) -> dict[str, float]:
    """The largest value of each scalar over ranks (a memory peak is the worst rank's)."""
    return _all_reduce(values, dist.ReduceOp.MAX, mean=False)


def _all_reduce(values: dict[str, float], op, mean: bool) -> dict[str, float]:
    if not values or not dist.is_initialized() or dist.get_world_size() == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device())
    dist.all_reduce(t, op=op)
    if mean:
        t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))
