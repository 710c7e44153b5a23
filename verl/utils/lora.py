"""LoRA adapters on the actor, with the peft library and veRL's keys.

`actor_rollout_ref.model.lora_rank` (0 = off), `lora_alpha` and `target_modules` ("all-linear" or
a list of module names). The adapters are injected into the plain HF model (peft's
`inject_adapter_in_model`), so FSDP, `generate` and the HF rollout see the same model class as
without LoRA; only the adapter weights train. The reference policy of a LoRA run is the same
module with its adapters switched off: no second copy of the weights.

Checkpoints hold the adapter (and its optimizer state); the HF export is the merged model
W = W0 + (alpha / r) * B @ A, which evaluation loads like any other checkpoint.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

ADAPTER_KEY = ".lora_"
BASE_SUFFIX = ".base_layer.weight"


def lora_enabled(model_cfg) -> bool:
    return model_cfg.lora_rank > 0


def lora_config(model_cfg):
    from peft import LoraConfig

    target = model_cfg.target_modules
    target = target if isinstance(target, str) else [str(t) for t in target]
    return LoraConfig(r=int(model_cfg.lora_rank), lora_alpha=float(model_cfg.lora_alpha),
                      target_modules=target, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")


def apply_lora(model: torch.nn.Module, model_cfg) -> torch.nn.Module:
    """Inject LoRA layers in place and freeze everything else; returns the same model object."""
    from peft import inject_adapter_in_model

    model = inject_adapter_in_model(lora_config(model_cfg), model)
    for name, param in model.named_parameters():
        param.requires_grad_(ADAPTER_KEY in name)
    return model


def lora_scaling(model_cfg) -> float:
    return float(model_cfg.lora_alpha) / int(model_cfg.lora_rank)


@contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The base model inside the block (the reference policy of a LoRA run)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def adapter_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a full state dict (what a LoRA checkpoint holds)."""
    return {key: value for key, value in state.items() if ADAPTER_KEY in key}


def merged_state_dict(state: dict[str, torch.Tensor], scaling: float, adapter: str = "default") -> dict[str, torch.Tensor]:
    """A full state dict of an injected model as the plain model's: every adapted weight becomes
    W0 + scaling * B @ A ([out, r] @ [r, in]) under its original name; adapter tensors are dropped.

    >>> w0, a, b = torch.zeros(2, 3), torch.ones(1, 3), torch.tensor([[1.0], [2.0]])
    >>> merged_state_dict({"q.base_layer.weight": w0, "q.lora_A.default.weight": a,
    ...                    "q.lora_B.default.weight": b}, scaling=0.5)["q.weight"].tolist()
    [[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]
    """
    merged = {}
    for key, value in state.items():
        if ADAPTER_KEY in key:
            continue
        if key.endswith(BASE_SUFFIX):
            prefix = key[: -len(BASE_SUFFIX)]
            a = state[f"{prefix}.lora_A.{adapter}.weight"].to(torch.float32)
            b = state[f"{prefix}.lora_B.{adapter}.weight"].to(torch.float32)
            merged[f"{prefix}.weight"] = (value.to(torch.float32) + scaling * (b @ a)).to(value.dtype)
        elif ".base_layer." in key:  # a bias of an adapted layer
            merged[key.replace(".base_layer.", ".")] = value
        else:
            merged[key] = value
    return merged


def save_peft_adapter(state: dict[str, torch.Tensor], model_cfg, directory: str | Path, adapter: str = "default") -> None:
    """The adapter in peft's own layout (adapter_config.json, adapter_model.safetensors), loadable
    with `PeftModel.from_pretrained(base_model, directory)`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {f"base_model.model.{key.replace(f'.{adapter}.', '.')}": value.contiguous()
               for key, value in adapter_state_dict(state).items()}
    save_file(weights, directory / "adapter_model.safetensors")
    config = lora_config(model_cfg)
    config.base_model_name_or_path = str(model_cfg.path)
    config.save_pretrained(str(directory))
