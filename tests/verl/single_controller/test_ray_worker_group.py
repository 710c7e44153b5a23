"""Dispatch modes of RayWorkerGroup with 2 real worker processes and a gloo process group."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import ray
import torch
import torch.distributed as dist

from verl.protocol import DataProto
from verl.single_controller.base import Dispatch, Worker, register
from verl.single_controller.base.decorator import dispatch_args
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
from verl.single_controller.ray.base import worker_env
from verl.utils.distributed import device

# Ray would import this test module by name in the workers, where tests/ is not on the path.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class EchoWorker(Worker):
    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def whoami(self, tag: str):
        return (tag, self.rank, self.world_size, dist.get_backend(), str(device()))

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def transform(self, data: DataProto) -> DataProto:
        # a collective proves the gloo group works: every rank learns the total row count
        rows = torch.tensor([len(data)])
        dist.all_reduce(rows)
        x = data.batch["x"]
        return DataProto.from_dict(
            {"y": x * self.scale, "rank": torch.full_like(x, self.rank), "total": rows.expand(len(data))},
            {"tag": np.array([f"{t}!" for t in data.non_tensor_batch["tag"]], dtype=object)},
            meta_info={"metrics": {"rank": self.rank}, "scale": self.scale},
        )

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def placement(self):
        return int(os.environ["LOCAL_RANK"]), ray.get_runtime_context().get_placement_group_id()

    @register(dispatch_mode=Dispatch.RANK_ZERO)
    def sum_ranks(self):
        t = torch.tensor([self.rank + 1])
        dist.all_reduce(t)
        return (self.rank, int(t))


@pytest.fixture(scope="module")
def group(ray_local):
    pool = RayResourcePool([2], use_gpu=False)
    return RayWorkerGroup(pool, RayClassWithInitArgs(EchoWorker, scale=3))


def test_one_to_all_reaches_every_rank(group):
    assert group.world_size == 2
    # a CPU pool gives CPU ranks over gloo, also on a machine with a GPU
    assert group.whoami("hi") == [("hi", 0, 2, "gloo", "cpu"), ("hi", 1, 2, "gloo", "cpu")]


def test_dp_compute_proto_pads_splits_gathers_and_unpads(group):
    x = torch.arange(5)
    data = DataProto.from_dict({"x": x}, {"tag": [str(i) for i in range(5)]})
    out = group.transform(data)
    # 5 rows padded to 6: ranks get rows [0,1,2] and [3,4,(0 again)]; the pad row is dropped
    assert out.batch["y"].tolist() == [0, 3, 6, 9, 12]
    assert out.batch["rank"].tolist() == [0, 0, 0, 1, 1]
    assert out.batch["total"].tolist() == [6] * 5
    assert list(out.non_tensor_batch["tag"]) == ["0!", "1!", "2!", "3!", "4!"]
    # metrics come back one value per rank; other meta_info keys agree across ranks
    assert out.meta_info == {"metrics": {"rank": [0, 1]}, "scale": 3}


def test_rank_zero_runs_everywhere_returns_rank_zero(group):
    assert group.sum_ranks() == (0, 3)  # 1 + 2 summed over both ranks


def test_dispatch_args_broadcasts_non_dataproto():
    data = DataProto.from_dict({"x": torch.arange(4)})
    per_rank, pad = dispatch_args(Dispatch.DP_COMPUTE_PROTO, 2, (data, 7), {"k": "v"})
    assert pad == 0
    assert [a[0].batch["x"].tolist() for a, _ in per_rank] == [[0, 1], [2, 3]]
    assert [(a[1], k) for a, k in per_rank] == [(7, {"k": "v"}), (7, {"k": "v"})]


@pytest.mark.parametrize("use_gpu", [True, False])
def test_a_gpu_worker_is_local_rank_0_of_the_one_gpu_it_sees(use_gpu):
    """2 nodes x 2 workers. Ray shows each GPU actor only its own GPU, so LOCAL_RANK (the device
    index vLLM's GPU worker selects) is 0 on every one; CPU workers keep their slot on the node."""
    slots = [0, 1, 0, 1]  # ranks 0, 1 on the first node, 2, 3 on the second
    envs = [worker_env(rank, 4, slot, 2, "10.0.0.1", 1234, use_gpu) for rank, slot in enumerate(slots)]
    assert [env["LOCAL_RANK"] for env in envs] == (["0", "0", "0", "0"] if use_gpu else ["0", "1", "0", "1"])
    assert [env["RANK"] for env in envs] == ["0", "1", "2", "3"]
    assert {(env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["MASTER_ADDR"], env["MASTER_PORT"], env["VERL_DEVICE"])
            for env in envs} == {("4", "2", "10.0.0.1", "1234", "cuda" if use_gpu else "cpu")}


def test_released_pool_frees_its_slots(ray_local):
    """Dropping a worker group frees its pool's slots at once (several trainers in one session).

    The pool is laid out as 2 "nodes" x 1 process (both land on this machine): one placement
    group per node, global ranks 0 and 1, local rank 0 on each, one gloo world across them.
    """
    import weakref

    pool = RayResourcePool([1, 1], use_gpu=False)
    wg = RayWorkerGroup(pool, RayClassWithInitArgs(EchoWorker, scale=1), name_prefix="echo")
    assert [r[1:3] for r in wg.whoami("x")] == [(0, 2), (1, 2)]
    (local0, pg0), (local1, pg1) = wg.placement()
    assert (local0, local1) == (0, 0) and pg0 != pg1
    assert wg.sum_ranks() == (0, 3)
    alive = weakref.ref(pool)
    del wg, pool
    assert alive() is None  # no reference cycle keeps the group (and so the pool) alive
    # the module's group holds 2 of the session's 4 CPUs: 2 more fit only if the dropped pool freed them
    again = RayResourcePool([2], use_gpu=False)
    assert len(again.placement_groups(timeout=30)) == 1
    with pytest.raises(RuntimeError, match="cannot place"):  # now all 4 CPUs are taken
        RayResourcePool([1], use_gpu=False).placement_groups(timeout=2)


@pytest.mark.cuda
def test_a_gpu_pool_gives_its_rank_the_gpu_and_nccl(ray_gpu):
    gpu_group = RayWorkerGroup(RayResourcePool([1], use_gpu=True), RayClassWithInitArgs(EchoWorker, scale=1))
    assert gpu_group.whoami("g") == [("g", 0, 1, "cpu:gloo,cuda:nccl", "cuda:0")]


@pytest.mark.cuda
def test_two_gpu_ranks_get_a_gpu_each(ray_gpu):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs (two NCCL ranks cannot share one GPU); {torch.cuda.device_count()} visible")
    gpu_group = RayWorkerGroup(RayResourcePool([2], use_gpu=True), RayClassWithInitArgs(EchoWorker, scale=1))
    # each sees only its own GPU, as its device 0
    assert [r[3:] for r in gpu_group.whoami("g")] == [("cpu:gloo,cuda:nccl", "cuda:0")] * 2
    assert [local for local, _ in gpu_group.placement()] == [0, 0]
