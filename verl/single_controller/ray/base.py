"""Ray implementation of resource pools and worker groups.

A `RayResourcePool` reserves `n_gpus_per_node` slots on each of `nnodes` machines (one placement
group per node, so ranks of a node share its fast interconnect); on CPU a slot is one worker process.
A `RayWorkerGroup` starts one Ray actor per slot, gives each its rank and the rendezvous address,
and exposes every `@register`-ed method of the worker class as a method of the group. Several groups
(e.g. actor_rollout_ref and critic) may share one pool: each actor takes 1/max_colocate_count of
its slot, so their processes land on the same devices.
"""
from __future__ import annotations

import uuid

import ray
from ray.actor import ActorClass
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from verl.single_controller.base.decorator import DISPATCH_ATTR, collect_results, dispatch_args
from verl.utils.distributed import DEVICE_ENV, free_port, node_ip


class RayResourcePool:
    def __init__(self, process_on_nodes: list[int], use_gpu: bool = False, max_colocate_count: int = 2):
        self.process_on_nodes = list(process_on_nodes)
        self.use_gpu = use_gpu
        self.max_colocate_count = max_colocate_count
        self._pgs = None

    @property
    def world_size(self) -> int:
        return sum(self.process_on_nodes)

    def __del__(self):
        # Placement groups outlive their actors; free the slots once no worker group uses the pool
        # (a driver may build several trainers in one Ray session, as the tests do).
        if self._pgs and ray.is_initialized():
            for pg in self._pgs:
                ray.util.remove_placement_group(pg)

    def placement_groups(self, timeout: float = 300.0) -> list:
        """One placement group per node; raises instead of waiting forever for absent resources."""
        if self._pgs is None:
            bundle = {"CPU": 1, "GPU": 1} if self.use_gpu else {"CPU": 1}
            self._pgs = [placement_group([bundle] * n, strategy="STRICT_PACK") for n in self.process_on_nodes]
            try:
                ray.get([pg.ready() for pg in self._pgs], timeout=timeout)
            except ray.exceptions.GetTimeoutError:
                raise RuntimeError(
                    f"the Ray cluster cannot place {self.process_on_nodes} workers per node with {bundle} each "
                    f"within {timeout:.0f} s (trainer.nnodes / trainer.n_gpus_per_node vs `ray status`)"
                ) from None
        return self._pgs


class RayClassWithInitArgs:
    """A worker class (plain or `ray.remote`-decorated) plus the arguments of its constructor."""

    def __init__(self, cls, *args, **kwargs):
        self.remote_cls = cls if isinstance(cls, ActorClass) else ray.remote(cls)
        self.cls = cls.__ray_metadata__.modified_class if isinstance(cls, ActorClass) else cls
        self.args, self.kwargs = args, kwargs


def worker_env(rank: int, world_size: int, node_index: int, node_size: int, master_addr: str, master_port: int,
               use_gpu: bool) -> dict[str, str]:
    """The environment of the worker of global `rank`, slot `node_index` of the `node_size` on its node.

    LOCAL_RANK is the index of the worker's device among those the process sees. Ray shows a GPU
    actor exactly its own GPU, so there it is 0 whatever the slot (vLLM's GPU worker selects
    `cuda:LOCAL_RANK` and refuses an index beyond the visible devices); a CPU worker keeps the slot
    index, torchrun's meaning, which selects nothing."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": "0" if use_gpu else str(node_index),
        "LOCAL_WORLD_SIZE": str(node_size),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        DEVICE_ENV: "cuda" if use_gpu else "cpu",
    }


@ray.remote(num_cpus=0.01)
def _rendezvous_address() -> tuple[str, int]:
    return node_ip(), free_port()


class RayWorkerGroup:
    def __init__(self, resource_pool: RayResourcePool, ray_cls_with_init: RayClassWithInitArgs,
                 name_prefix: str | None = None, max_concurrency: int = 1):
        """`name_prefix` names the actors `<prefix>_<id>_<rank>` (Ray dashboard, `ray.get_actor`).
        `max_concurrency` > 1 makes each actor threaded: that many of its method calls run at once
        (rollout servers: one blocking `server_generate` per request in flight). Ray's default, 1,
        runs one call at a time, in order, as every training method expects."""
        self.resource_pool = resource_pool
        self.world_size = resource_pool.world_size
        pgs = resource_pool.placement_groups()
        share = 1.0 / resource_pool.max_colocate_count
        # Rank 0 hosts the torch.distributed store, so the address is taken on rank 0's node.
        master_addr, master_port = ray.get(
            _rendezvous_address.options(scheduling_strategy=self._in_bundle(pgs[0], 0)).remote()
        )
        prefix = f"{name_prefix or ray_cls_with_init.cls.__name__}_{uuid.uuid4().hex[:6]}"
        self.workers = []
        for pg, n_local in zip(pgs, resource_pool.process_on_nodes):
            for local_rank in range(n_local):
                env = worker_env(len(self.workers), self.world_size, local_rank, n_local, master_addr, master_port,
                                 resource_pool.use_gpu)
                actor = ray_cls_with_init.remote_cls.options(
                    scheduling_strategy=self._in_bundle(pg, local_rank),
                    num_cpus=share,
                    num_gpus=share if resource_pool.use_gpu else 0,
                    runtime_env={"env_vars": env},
                    name=f"{prefix}_{len(self.workers)}",
                    max_concurrency=max_concurrency,
                ).remote(*ray_cls_with_init.args, **ray_cls_with_init.kwargs)
                self.workers.append(actor)
        # Constructors rendezvous with each other; wait so that a failing one raises here.
        ranks = ray.get([w.ping.remote() for w in self.workers])
        assert ranks == list(range(self.world_size)), ranks
        self._bind_registered_methods(ray_cls_with_init.cls)

    @staticmethod
    def _in_bundle(pg, index: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)

    def _bind_registered_methods(self, cls) -> None:
        for name in dir(cls):
            mode = getattr(getattr(cls, name, None), DISPATCH_ATTR, None)
            if mode is not None:
                setattr(self, name, self._group_method(name, mode))

    def _group_method(self, name: str, mode):
        # The closure holds the actor handles, not `self`: no reference cycle, so dropping the
        # group frees its actors (and then its pool) at once rather than at some later gc.
        workers = list(self.workers)

        def call(*args, **kwargs):
            per_rank, pad_size = dispatch_args(mode, len(workers), args, kwargs)
            refs = [getattr(w, name).remote(*a, **k) for w, (a, k) in zip(workers, per_rank)]
            return collect_results(mode, ray.get(refs), pad_size)

        call.__name__ = name
        return call
