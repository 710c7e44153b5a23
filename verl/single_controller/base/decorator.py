"""`@register(dispatch_mode=...)`: how a worker-group call fans out to ranks and fans back in.

A worker method tagged here becomes a method of the worker group with the same name; the driver
then writes `actor_wg.compute_log_prob(batch)` and never touches ranks or Ray handles.
"""
from __future__ import annotations

from enum import Enum

from verl.protocol import DataProto, pad_dataproto_to_divisor, unpad_dataproto

DISPATCH_ATTR = "_dispatch_mode"


class Dispatch(Enum):
    ONE_TO_ALL = "one_to_all"  # the same arguments to every rank; a list of the results back
    DP_COMPUTE_PROTO = "dp_compute_proto"  # DataProto args padded, split by rank; results concatenated
    RANK_ZERO = "rank_zero"  # every rank runs (collectives need all); rank 0's result back


def register(dispatch_mode: Dispatch = Dispatch.ONE_TO_ALL):
    def tag(method):
        setattr(method, DISPATCH_ATTR, dispatch_mode)
        return method

    return tag


def dispatch_args(mode: Dispatch, world_size: int, args: tuple, kwargs: dict):
    """-> (per-rank list of (args, kwargs), pad_size)."""
    if mode is not Dispatch.DP_COMPUTE_PROTO:
        return [(args, kwargs)] * world_size, 0
    pad_sizes = set()

    def split(value):
        if not isinstance(value, DataProto):
            return [value] * world_size
        padded, pad = pad_dataproto_to_divisor(value, world_size)
        pad_sizes.add(pad)
        return padded.chunk(world_size)

    arg_parts = [split(a) for a in args]
    kwarg_parts = {k: split(v) for k, v in kwargs.items()}
    if len(pad_sizes) > 1:
        raise ValueError("DP_COMPUTE_PROTO arguments must be DataProtos of equal length")
    per_rank = [
        (tuple(p[r] for p in arg_parts), {k: p[r] for k, p in kwarg_parts.items()})
        for r in range(world_size)
    ]
    return per_rank, pad_sizes.pop() if pad_sizes else 0


def collect_results(mode: Dispatch, results: list, pad_size: int):
    if mode is Dispatch.ONE_TO_ALL:
        return results
    if mode is Dispatch.RANK_ZERO:
        return results[0]
    if not all(isinstance(r, DataProto) for r in results):
        raise TypeError(f"DP_COMPUTE_PROTO methods must return DataProto, got {[type(r).__name__ for r in results]}")
    # as in veRL, concat gathers meta_info["metrics"] into one value per rank; other keys must agree
    return unpad_dataproto(DataProto.concat(results), pad_size)
