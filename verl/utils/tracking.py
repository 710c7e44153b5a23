"""Experiment logging to the console, wandb and tensorboard, from rank 0 only.

    tracker = Tracking("rag_r1", "ppo-nq", backends=["console", "wandb"], config=config_dict)
    tracker.log({"critic/vf_loss": 0.3}, step=7)
    tracker.finish()

wandb honours its own environment (`WANDB_MODE=offline` logs without a network);
tensorboard writes to `log_dir` (default `$TENSORBOARD_DIR` or `tensorboard_log/<project>/<experiment>`).
"""
from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

BACKENDS = ("console", "wandb", "tensorboard", "jsonl")


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def format_console(data: dict, step: int) -> str:
    parts = [f"step:{step}"]
    for key in sorted(data):
        value = data[key]
        parts.append(f"{key}:{value:.4g}" if isinstance(value, numbers.Real) else f"{key}:{value}")
    return " - ".join(parts)


class Tracking:
    def __init__(self, project_name: str, experiment_name: str, backends=("console",), config: dict | None = None,
                 log_dir: str | None = None, jsonl_path: str | None = None):
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown logger backend(s) {unknown}; expected some of {BACKENDS}")
        self.backends = list(backends) if is_rank_zero() else []
        self._wandb = self._tensorboard = self._jsonl = None
        if "jsonl" in self.backends:
            # One JSON object per step, appended: reports and plots read it without wandb/tensorboard,
            # and a resumed run continues the same file (after `rewind`).
            path = Path(jsonl_path or Path(log_dir or ".") / "metrics.jsonl")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = path.open("a", encoding="utf-8")
        if "wandb" in self.backends:
            import wandb

            self._wandb = wandb.init(project=project_name, name=experiment_name, config=config)
        if "tensorboard" in self.backends:
            from torch.utils.tensorboard import SummaryWriter

            default = os.environ.get("TENSORBOARD_DIR") or Path("tensorboard_log") / project_name / experiment_name
            self._tensorboard = SummaryWriter(log_dir=str(log_dir or default))

    def rewind(self, step: int | None) -> None:
        """Where a run (re)starts: the jsonl keeps the rows of steps up to `step`, the checkpoint it resumed
        from, and drops those a killed run wrote after it, which the resumed run logs again; `None`, a run
        starting over, empties it. A line cut short by the kill is dropped too."""
        if self._jsonl is None:
            return
        path = Path(self._jsonl.name)
        self._jsonl.close()
        lines = [] if step is None else path.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                row_step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if row_step <= step:
                kept.append(line + "\n")
        path.write_text("".join(kept), encoding="utf-8")
        self._jsonl = path.open("a", encoding="utf-8")

    def log(self, data: dict, step: int) -> None:
        if "console" in self.backends:
            print(format_console(data, step), flush=True)
        if self._wandb is not None:
            self._wandb.log(data, step=step)
        if self._jsonl is not None:
            row = {"step": step, **{k: v for k, v in data.items() if isinstance(v, (numbers.Real, str))}}
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        if self._tensorboard is not None:
            for key, value in data.items():
                if isinstance(value, numbers.Real):
                    self._tensorboard.add_scalar(key, value, step)
            self._tensorboard.flush()

    def finish(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
