"""How long a run is and when it validates and saves: one meaning of `trainer.total_training_steps`,
`trainer.save_freq` and `trainer.test_freq` for the PPO trainer and the SFT trainer.

    >>> run_length(steps_per_epoch=10, total_epochs=2, total_training_steps=None)
    20
    >>> run_length(steps_per_epoch=10, total_epochs=2, total_training_steps=25)  # a third pass, cut short
    25
    >>> [step for step in range(1, 8) if is_due(3, step, last=step == 7)]
    [3, 6, 7]
    >>> [step for step in range(1, 8) if is_due(0, step, last=step == 7)], is_due(-1, 7, last=True)
    ([7], False)
"""
from __future__ import annotations


def run_length(steps_per_epoch: int, total_epochs: int, total_training_steps: int | None) -> int:
    """Optimizer steps of a run: `total_training_steps` when set, whatever `total_epochs` (the data
    repeats epoch after epoch, or the run stops mid-epoch); else `total_epochs` full passes."""
    if total_training_steps is not None:
        return total_training_steps
    return steps_per_epoch * total_epochs


def is_due(freq: int, step: int, last: bool) -> bool:
    """Whether a periodic action (a checkpoint, a validation) runs after `step` (1-based): with
    `freq` > 0 every `freq` steps and after the last step; with 0 after the last step only; with a
    negative `freq` never."""
    if freq < 0:
        return False
    return last or (freq > 0 and step % freq == 0)
