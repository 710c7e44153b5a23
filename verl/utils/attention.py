"""`sdpa_gqa`: transformers' sdpa attention with grouped-query attention left to the kernel.

Models with fewer key/value heads than query heads (SmolLM2, Qwen2.5, Qwen3) share each key/value
head among several query heads. Transformers 5's sdpa path hands torch the grouping
(`enable_gqa`) only where no attention mask is given; with one (every padded batch, every decode
step continued from a cache) it first copies the keys and values once per query head sharing them
(`repeat_kv`), a copy of the whole cache per layer per generated token. Torch's CPU kernels take
`enable_gqa` with a mask, so `sdpa_gqa` always passes it there; the masks are sdpa's, and anything
that is not a grouped-query model on the CPU goes through transformers' own sdpa unchanged.

The HF rollout engine and evaluation generate with it (`use_for_generation`): with SmolLM2-135M
greedy tokens are identical to sdpa's and generation is faster
(`python -m scripts.bench.attention_bench` prints the ratio).
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_gqa"


def sdpa_gqa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, H, Q, D], key/value [B, H_kv, K, D], attention_mask [B, 1, Q, K] or None
    -> ([B, Q, H, D], None), as transformers' attention functions return."""
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    if not grouped or query.device.type != "cpu" or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # as transformers decides: the causal flag only for a multi-token query with no mask to follow
    causal = bool(query.shape[2] > 1 and attention_mask is None and causal)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal,
        enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_gqa_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_for_generation(model: torch.nn.Module) -> torch.nn.Module:
    """`model` switched from sdpa to sdpa_gqa (any other implementation is kept); returns it."""
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(NAME)
    return model
