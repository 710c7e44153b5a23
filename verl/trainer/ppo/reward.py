"""Rule rewards: load `custom_reward_function`, score decoded responses, place scores on tokens.

The reward function is pure: `compute_score(data_source, solution_str, ground_truth, extra_info)
-> float | dict`, where `solution_str` is the decoded response only (never the prompt) and a dict
holds "score" plus extra numbers, logged as `reward/<key>`. Example:

    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        return float(ground_truth in solution_str)
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from verl.protocol import DataProto

ScoreFn = Callable[..., "float | dict"]


def load_reward_function(path: str | None, name: str = "compute_score", reward_kwargs: dict | None = None) -> ScoreFn:
    """`module:function`, or a `.py` file path whose function is `name`; `reward_kwargs`
    (custom_reward_function.reward_kwargs) are passed to every call."""
    if not path:
        raise ValueError("custom_reward_function.path is not set: give 'module:function' or a .py file")
    if path.endswith(".py") or Path(path).is_file():
        if not Path(path).is_file():
            raise FileNotFoundError(f"custom_reward_function.path={path!r}: no such file")
        spec = importlib.util.spec_from_file_location(f"custom_reward_{Path(path).stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        function_name = name
    elif ":" in path:
        module_name, function_name = path.split(":", 1)
        module = importlib.import_module(module_name)
    else:
        raise ValueError(f"custom_reward_function.path={path!r}: expected 'module:function' or a .py file")
    if not hasattr(module, function_name):
        raise AttributeError(f"custom_reward_function: {module.__name__} has no function {function_name!r}")
    function = getattr(module, function_name)
    return functools.partial(function, **reward_kwargs) if reward_kwargs else function


class RewardManager:
    """Scores a rollout batch: `manager(data) -> (token_level_scores [B, R], extras)`.

    The score of a row sits on its last response token (zeros elsewhere); `extras` maps each extra
    key of dict-valued scores to a per-row list (rows without that key get NaN).
    """

    def __init__(self, tokenizer, compute_score: ScoreFn, num_examine: int = 0):
        self.tokenizer = tokenizer
        self.compute_score = compute_score
        self.num_examine = num_examine  # rows per data source printed, for eyeballing

    def __call__(self, data: DataProto) -> tuple[torch.Tensor, dict[str, list[float]]]:
        responses = data.batch["responses"]
        response_mask = data.batch["response_mask"]
        lengths = response_mask.sum(-1).long()
        scores = torch.zeros(responses.shape, dtype=torch.float32)
        extras: dict[str, list[float]] = defaultdict(lambda: [float("nan")] * len(data))
        printed: dict[str, int] = defaultdict(int)
        for row in range(len(data)):
            length = int(lengths[row])
            text = self.tokenizer.decode(responses[row, :length].tolist(), skip_special_tokens=True)
            data_source = _get(data, "data_source", row, default="unknown")
            reward_model = _get(data, "reward_model", row, default={}) or {}
            result = self.compute_score(
                data_source=data_source,
                solution_str=text,
                ground_truth=reward_model.get("ground_truth"),
                extra_info=_get(data, "extra_info", row, default=None),
            )
            if isinstance(result, dict):
                score = float(result["score"])
                for key, value in result.items():
                    if key != "score":
                        extras[key][row] = float(value)
            else:
                score = float(result)
            scores[row, max(length - 1, 0)] = score
            if printed[data_source] < self.num_examine:
                printed[data_source] += 1
                print(f"[reward] {data_source} score={score:.3f} response={text!r}")
        return scores, dict(extras)


def _get(data: DataProto, key: str, row: int, default):
    column = data.non_tensor_batch.get(key)
    return default if column is None else column[row]


def reward_metrics(extras: dict[str, list[float]], prefix: str = "reward") -> dict[str, float]:
    """Means of the extra numbers returned by dict-valued reward functions, as `reward/<key>`."""
    metrics = {}
    for key, values in extras.items():
        values = np.asarray(values, dtype=np.float64)
        if np.isfinite(values).any():
            metrics[f"{prefix}/{key}"] = float(np.nanmean(values))
    return metrics
