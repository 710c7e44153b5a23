"""The worker's device comes from its configuration, never from the hardware it happens to see."""
from __future__ import annotations

import torch

from verl.utils import distributed
from verl.utils.distributed import DEVICE_ENV, device


def test_a_cpu_configured_worker_stays_on_cpu_where_cuda_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert device() == torch.device("cpu")  # unset: cpu
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    assert device() == torch.device("cuda", 0)


def test_backend_follows_the_configured_device(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: calls.append(backend))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(f"set_device({index})"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    distributed.init_process_group_from_env()
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    distributed.init_process_group_from_env()
    assert calls == ["gloo", "set_device(0)", "nccl"]
