"""The worker's device comes from its configuration, never from the hardware it happens to see;
the process group's backend and timeout follow the configuration too."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
import torch

from verl.utils import distributed
from verl.utils.distributed import DEVICE_ENV, device, empty_device_cache, process_group_backend


def test_a_cpu_configured_worker_stays_on_cpu_where_cuda_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert device() == torch.device("cpu")  # unset: cpu
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    assert device() == torch.device("cuda", 0)


def test_a_gpu_group_reduces_cpu_tensors_over_gloo_and_cuda_ones_over_nccl():
    assert process_group_backend("cpu") == "gloo"
    # mixed on GPU whatever the offload settings: offloaded shards reduce their gradients' norm on the CPU
    assert process_group_backend("cuda") == "cpu:gloo,cuda:nccl"


@pytest.fixture
def init_calls(monkeypatch):
    """What init_process_group_from_env hands torch (and which GPU it selects), without joining a group."""
    calls = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(f"set_device({index})"))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    return calls


def test_backend_and_timeout_follow_the_configuration(monkeypatch, init_calls):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    distributed.init_process_group_from_env(timeout_s=3600)
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    distributed.init_process_group_from_env()
    assert init_calls == [
        {"backend": "gloo", "rank": 1, "world_size": 2, "timeout": timedelta(seconds=3600)},
        "set_device(0)",
        {"backend": "cpu:gloo,cuda:nccl", "rank": 1, "world_size": 2, "timeout": None},  # torch's default
    ]


def test_the_workers_pass_their_configured_timeout(monkeypatch, init_calls, tiny_model_dir):
    from verl.trainer.config import schema_node
    from verl.workers.fsdp_workers import ActorRolloutRefWorker, CriticWorker

    monkeypatch.setenv(DEVICE_ENV, "cpu")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # a worker group sets it: the worker joins a group
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave this process's threads alone
    actor = schema_node("actor_rollout_ref", {"model": {"path": str(tiny_model_dir)}, "nccl_timeout": 7200,
                                              "actor": {"ppo_mini_batch_size": 2}})
    ActorRolloutRefWorker(actor, role="actor_rollout_ref")
    critic = schema_node("critic", {"model": {"path": str(tiny_model_dir)}, "ppo_mini_batch_size": 2})
    CriticWorker(critic)
    assert [call["timeout"] for call in init_calls] == [timedelta(seconds=7200), timedelta(seconds=3600)]


def test_the_cache_is_emptied_on_cuda_workers_only(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(device()))
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    empty_device_cache()
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    empty_device_cache()
    assert emptied == [torch.device("cuda", 0)]


FREED_ON_ANOTHER_THREAD = """
import threading, torch
from verl.utils.distributed import return_freed_heap

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

kept = []
def phase():  # a phase on a thread of its own: 1 MB tensors, all freed but the last (it pins the heap's top)
    tensors = [torch.ones(2**18) for _ in range(400)]
    kept.append(tensors.pop())
    del tensors
thread = threading.Thread(target=phase)
thread.start(); thread.join()
before = rss_mb()
return_freed_heap()
print(before, rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim: Linux only")
def test_what_a_phase_freed_on_another_thread_goes_back_to_the_system():
    # heap allocations for 1 MB tensors, whatever glibc's adaptive threshold has seen
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}
    out = subprocess.run([sys.executable, "-c", FREED_ON_ANOTHER_THREAD], env=env, capture_output=True,
                         text=True, check=True).stdout
    before, after = map(float, out.split())
    assert before - after > 300, (before, after)  # of the ~399 MB freed
