"""Trainer checkpoints: where they live, which is the latest, and the trainer's own state.

Layout under `trainer.default_local_dir` (veRL's):

    global_step_{k}/actor/            actor worker checkpoint (model, optimizer, lr scheduler)
    global_step_{k}/critic/           critic worker checkpoint
    global_step_{k}/trainer_state.pt  global step, dataloader position, RNG of python/numpy/torch, extras
    latest_checkpointed_iteration.txt the k of the last complete checkpoint

The tracker file is written last, so a run killed while saving resumes from the previous step.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

TRACKER_FILE = "latest_checkpointed_iteration.txt"
STATE_FILE = "trainer_state.pt"


def step_dir(root: str | Path, global_step: int) -> Path:
    return Path(root) / f"global_step_{global_step}"


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_trainer_state(directory: str | Path, global_step: int, dataloader: dict, extra: dict | None = None) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {"global_step": global_step, "dataloader": dataloader, "rng": rng_state(), "extra": extra or {}}
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, directory / STATE_FILE)


def load_trainer_state(directory: str | Path) -> dict:
    """The saved dict; also restores the RNG states of python, numpy and torch."""
    state = torch.load(Path(directory) / STATE_FILE, weights_only=False)
    set_rng_state(state["rng"])
    return state


def mark_latest(root: str | Path, global_step: int) -> None:
    tmp = Path(root) / (TRACKER_FILE + ".tmp")
    tmp.write_text(f"{global_step}\n")
    os.replace(tmp, Path(root) / TRACKER_FILE)


def latest_step_dir(root: str | Path) -> Path | None:
    tracker = Path(root) / TRACKER_FILE
    if not tracker.is_file():
        return None
    directory = step_dir(root, int(tracker.read_text().strip()))
    if not (directory / STATE_FILE).is_file():
        raise FileNotFoundError(f"{tracker} points to {directory}, which has no {STATE_FILE}")
    return directory


def resolve_resume_dir(resume_mode: str, root: str | Path) -> Path | None:
    """trainer.resume_mode: "disable" -> None; "auto" -> latest under `root` (None if there is
    none); anything else is the path of a `global_step_N` directory, which must exist."""
    if resume_mode == "disable":
        return None
    if resume_mode == "auto":
        return latest_step_dir(root)
    directory = Path(resume_mode)
    if not re.fullmatch(r"global_step_\d+", directory.name) or not (directory / STATE_FILE).is_file():
        raise FileNotFoundError(f"trainer.resume_mode={resume_mode!r}: expected auto, disable or a "
                                f"global_step_N directory holding {STATE_FILE}")
    return directory


def prune(root: str | Path, part: str | None, keep: int | None) -> list[Path]:
    """Delete `part` ("actor" or "critic") of every checkpoint but the newest `keep` ones
    (trainer.max_{actor,critic}_ckpt_to_keep; None keeps all), and step directories left with
    neither; `part` None deletes those whole step directories (the SFT trainer's, which hold one
    model; its trainer.max_ckpt_to_keep). Returns the deleted paths. The newest complete checkpoint
    is never touched."""
    if keep is None:
        return []
    if keep < 1:
        raise ValueError(f"checkpoints to keep must be >= 1 (or None for all), got {keep}")
    steps = sorted((p for p in Path(root).glob("global_step_*") if re.fullmatch(r"global_step_\d+", p.name)),
                   key=lambda p: int(p.name.rsplit("_", 1)[1]))
    deleted = []
    for directory in steps[:-keep]:
        target = directory if part is None else directory / part
        if target.exists():
            shutil.rmtree(target)
            deleted.append(target)
        if directory.exists() and not (directory / "actor").exists() and not (directory / "critic").exists():
            shutil.rmtree(directory)
            deleted.append(directory)
    return deleted
