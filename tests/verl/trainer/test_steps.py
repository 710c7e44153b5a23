"""One meaning of trainer.total_training_steps, save_freq and test_freq (verl.trainer.steps), and
both trainers use it."""
from __future__ import annotations

import pytest

from verl.trainer.ppo.ray_trainer import total_training_steps
from verl.trainer.steps import is_due, run_length
from verl.utils import checkpoint as ckpt


def test_total_training_steps_wins_over_epochs_either_way():
    assert run_length(steps_per_epoch=4, total_epochs=3, total_training_steps=None) == 12
    assert run_length(steps_per_epoch=4, total_epochs=3, total_training_steps=5) == 5  # stops mid-epoch 2
    assert run_length(steps_per_epoch=4, total_epochs=1, total_training_steps=10) == 10  # the data repeats


@pytest.mark.parametrize("freq, due", [(3, [3, 6, 7]), (1, [1, 2, 3, 4, 5, 6, 7]), (0, [7]), (-1, [])])
def test_periodic_actions_run_every_freq_steps_and_after_the_last(freq, due):
    assert [step for step in range(1, 8) if is_due(freq, step, last=step == 7)] == due


def test_the_ppo_trainer_counts_steps_so():
    from verl.trainer.config import schema_node

    config = schema_node("", {"data": {"train_batch_size": 4}, "trainer": {"total_epochs": 2}})
    assert total_training_steps(config, train_dataset_rows=10) == 4  # 2 full batches per epoch
    config.trainer.total_training_steps = 7
    assert total_training_steps(config, train_dataset_rows=10) == 7


def test_the_sft_trainer_runs_past_an_epoch_and_saves_as_told(tiny_model_dir, tmp_path):
    import json

    from test_fsdp_sft_trainer import agent_row, config

    from verl.trainer.fsdp_sft_trainer import fit

    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(agent_row(i)) for i in range(4)) + "\n")  # one batch of 4 per epoch
    metrics = fit(config(tiny_model_dir, train, tmp_path / "never", "trainer.total_training_steps=3",
                         "trainer.save_freq=-1", "trainer.test_freq=-1"))
    assert metrics["train/epoch"] == 2 and "val/loss" not in metrics  # a third pass; no validation
    assert not ckpt.step_dir(tmp_path / "never", 3).exists()
    metrics = fit(config(tiny_model_dir, train, tmp_path / "last", "trainer.total_training_steps=2"))
    assert "val/loss" in metrics  # test_freq 0 (the default): after the last step
    assert ckpt.step_dir(tmp_path / "last", 2).is_dir() and not ckpt.step_dir(tmp_path / "last", 1).exists()
