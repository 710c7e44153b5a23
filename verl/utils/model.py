"""Building the HF models the workers train: the causal LM of actor/ref and the critic's value model."""
from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM


def hf_config(model_cfg: DictConfig):
    overrides = OmegaConf.to_container(model_cfg.override_config, resolve=True)
    return AutoConfig.from_pretrained(
        model_cfg.path, trust_remote_code=model_cfg.trust_remote_code, **overrides
    )


def load_causal_lm(model_cfg: DictConfig, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The policy as HF stores it, in `dtype` (fp32 master weights for training)."""
    model = AutoModelForCausalLM.from_pretrained(
        model_cfg.path, config=hf_config(model_cfg), torch_dtype=dtype,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    if model_cfg.enable_gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


class ValueModel(torch.nn.Module):
    """A causal LM's transformer body with a scalar head: one value per position.

    The head reads the last hidden state; it starts at zero so the first value estimates are 0
    and the first critic updates are not dominated by a random projection.
    """

    def __init__(self, backbone: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.value_head(hidden).squeeze(-1)


def load_value_model(model_cfg: DictConfig, dtype: torch.dtype = torch.float32) -> ValueModel:
    config = hf_config(model_cfg)
    # AutoModel drops the LM head of a *ForCausalLM checkpoint and keeps its body.
    backbone = AutoModel.from_pretrained(
        model_cfg.path, config=config, torch_dtype=dtype,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    if model_cfg.enable_gradient_checkpointing:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return ValueModel(backbone, config.hidden_size).to(dtype)


def decoder_layer_classes(model: torch.nn.Module) -> tuple[type, ...]:
    """The transformer block classes (HF names them in `_no_split_modules`): the FSDP units."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return tuple({type(m) for m in model.modules() if type(m).__name__ in names})
