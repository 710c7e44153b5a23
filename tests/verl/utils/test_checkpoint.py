from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from verl.utils import checkpoint


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_trainer_state_restores_rng_and_position(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    directory = checkpoint.step_dir(tmp_path, 3)
    checkpoint.save_trainer_state(directory, 3, {"epoch": 1, "batches_served": 2}, extra={"kl_coef": 0.2})
    expected = draws()
    draws()
    state = checkpoint.load_trainer_state(directory)
    assert draws() == expected
    assert state["global_step"] == 3 and state["dataloader"] == {"epoch": 1, "batches_served": 2}
    assert state["extra"] == {"kl_coef": 0.2}


def test_resume_modes(tmp_path):
    assert checkpoint.resolve_resume_dir("auto", tmp_path) is None  # nothing saved yet
    for step in (2, 4):
        checkpoint.save_trainer_state(checkpoint.step_dir(tmp_path, step), step, {})
    assert checkpoint.resolve_resume_dir("auto", tmp_path) is None  # no tracker: no complete checkpoint
    checkpoint.mark_latest(tmp_path, 4)
    assert checkpoint.resolve_resume_dir("auto", tmp_path) == tmp_path / "global_step_4"
    assert checkpoint.resolve_resume_dir("disable", tmp_path) is None
    assert checkpoint.resolve_resume_dir(str(tmp_path / "global_step_2"), tmp_path) == tmp_path / "global_step_2"
    with pytest.raises(FileNotFoundError, match="global_step_9"):
        checkpoint.resolve_resume_dir(str(tmp_path / "global_step_9"), tmp_path)


def test_prune_keeps_the_newest_actor_and_critic_checkpoints(tmp_path):
    for step in (1, 2, 10):
        for part in ("actor", "critic"):
            (checkpoint.step_dir(tmp_path, step) / part).mkdir(parents=True)
    assert checkpoint.prune(tmp_path, "actor", None) == []
    deleted = checkpoint.prune(tmp_path, "actor", 2)
    assert deleted == [checkpoint.step_dir(tmp_path, 1) / "actor"]  # step 10 after step 2: numeric order
    assert (checkpoint.step_dir(tmp_path, 1) / "critic").is_dir()
    checkpoint.prune(tmp_path, "critic", 1)
    # step 1 holds nothing any more and goes; step 2 keeps its actor
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_10", "global_step_2"]
    assert sorted(p.name for p in checkpoint.step_dir(tmp_path, 2).iterdir()) == ["actor"]
    with pytest.raises(ValueError, match=">= 1"):
        checkpoint.prune(tmp_path, "actor", 0)


def test_prune_of_whole_step_directories_keeps_the_newest(tmp_path):
    for step in (2, 4, 10):
        checkpoint.step_dir(tmp_path, step).mkdir(parents=True)
        (checkpoint.step_dir(tmp_path, step) / "model.safetensors").write_text("weights")
    assert checkpoint.prune(tmp_path, None, None) == []
    assert checkpoint.prune(tmp_path, None, 1) == [checkpoint.step_dir(tmp_path, 2), checkpoint.step_dir(tmp_path, 4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_10"]
