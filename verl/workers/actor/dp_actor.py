"""The PPO policy on one data-parallel rank: log-probs and the clipped-surrogate update.

Knows nothing about ranks or sharding: `module` may be FSDP-sharded or a plain HF model, and the
gradient averaging happens inside it. Batches follow docs/architecture.md (prompts left padded,
responses right padded); the logits that predict response token t sit at position P + t - 1.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from verl.protocol import DataProto
from verl.trainer.ppo.core_algos import agg_loss, compute_policy_loss, kl_penalty
from verl.utils.seqlen_balancing import map_micro_batches
from verl.utils.torch_functional import (entropy_from_logits, logprobs_from_logits, pad_sequence_to_length,
                                         trim_padding_columns)
from verl.workers.update_loop import run_updates


def response_logits(module: torch.nn.Module, batch: dict, temperature: float) -> torch.Tensor:
    """[B, R', V] fp32 logits that predicted the first R' response tokens, divided by the sampling
    temperature; R' <= R drops the trailing columns that are padding in every row."""
    inputs, kept = trim_padding_columns(batch, batch["responses"].shape[1])
    # logits_to_keep: the [*, V] LM head runs on the response positions only, never on the prompt.
    logits = module(**inputs, use_cache=False, logits_to_keep=kept + 1).logits[:, :-1].float()
    return logits / temperature if temperature != 1.0 else logits


def policy_loss_mask(data: DataProto, state_masking: bool) -> torch.Tensor:
    """response_mask, without the retrieved (info_mask) tokens when state_masking."""
    mask = data.batch["response_mask"]
    if state_masking and "info_mask" in data.batch:
        mask = mask * (1 - data.batch["info_mask"])
    return mask


class DataParallelPPOActor:
    def __init__(self, config: DictConfig, module: torch.nn.Module, optimizer=None, mini_batch_size: int = 0):
        """`config`: the `actor` (or `ref`) subtree; `mini_batch_size`: rows per rank per optimizer step."""
        self.config = config
        self.module = module
        self.optimizer = optimizer
        self.mini_batch_size = mini_batch_size

    def _log_probs(self, batch: dict, temperature: float, with_entropy: bool, entropy_grad: bool = False):
        # Padding positions read 0 whatever the micro-batch size (a micro-batch may trim them away).
        mask = batch["response_mask"]
        logits = response_logits(self.module, batch, temperature)
        log_probs = logprobs_from_logits(logits, batch["responses"][:, :logits.shape[1]])
        log_probs = pad_sequence_to_length(log_probs, mask.shape[1], 0.0) * mask
        if not with_entropy:
            return log_probs, None
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = pad_sequence_to_length(entropy_from_logits(logits), mask.shape[1], 0.0) * mask
        return log_probs, entropy

    @torch.no_grad()
    def compute_log_prob(self, data: DataProto, micro_batch_size: int, max_token_len: int | None = None,
                         with_entropy: bool = True):
        """-> (log_probs [B, R], entropys [B, R] or None), computed `micro_batch_size` rows at a time,
        or in token-budget micro-batches of at most `max_token_len` padded tokens when given."""
        temperature = data.meta_info.get("temperature", 1.0)
        self.module.eval()

        def forward(micro: DataProto) -> torch.Tensor:
            log_probs, entropy = self._log_probs(micro.batch, temperature, with_entropy)
            return torch.stack([log_probs, entropy]) if with_entropy else log_probs.unsqueeze(0)

        # rows on dim 1: map_micro_batches concatenates and reorders along dim 0
        stacked = map_micro_batches(data, micro_batch_size, max_token_len, lambda m: forward(m).transpose(0, 1))
        stacked = stacked.transpose(0, 1)
        return stacked[0], stacked[1] if with_entropy else None

    def update_policy(self, data: DataProto) -> dict[str, float]:
        cfg = self.config
        temperature = data.meta_info.get("temperature", 1.0)
        mode = cfg.get("loss_agg_mode", "token-mean")
        entropy_coeff = float(cfg.get("entropy_coeff", 0.0))
        use_kl_loss = bool(cfg.get("use_kl_loss", False))
        mini_batch_size = self.mini_batch_size or len(data)
        on_policy = "old_log_probs" not in data.batch
        if on_policy and (cfg.get("ppo_epochs", 1) > 1 or mini_batch_size < len(data)):
            raise ValueError("update_policy without old_log_probs needs one epoch over one mini-batch "
                             f"(ppo_epochs={cfg.get('ppo_epochs', 1)}, {len(data)} rows, mini-batch {mini_batch_size})")

        def micro_loss(micro: DataProto, normalizer: torch.Tensor):
            batch = micro.batch
            mask = policy_loss_mask(micro, cfg.get("state_masking", False))
            # the entropy is always reported; it carries gradient only when it is in the loss
            log_prob, entropy = self._log_probs(batch, temperature, True, entropy_grad=entropy_coeff != 0)
            # On-policy (the trainer skipped the recomputation): the sampling policy IS the current one.
            old_log_prob = log_prob.detach() if on_policy else batch["old_log_probs"]
            pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower = compute_policy_loss(
                old_log_prob, log_prob, batch["advantages"], mask,
                cliprange=cfg.clip_ratio, cliprange_low=cfg.get("clip_ratio_low"),
                cliprange_high=cfg.get("clip_ratio_high"), clip_ratio_c=cfg.get("clip_ratio_c", 3.0),
                loss_agg_mode=mode, normalizer=normalizer,
            )
            mask_f = mask.to(log_prob.dtype)
            entropy_term = agg_loss(entropy, mask_f, mode, normalizer)
            loss = pg_loss - entropy_coeff * entropy_term
            additive = {"actor/pg_loss": pg_loss.detach(), "actor/entropy": entropy_term.detach()}
            if use_kl_loss:
                kl = kl_penalty(log_prob, batch["ref_log_prob"], cfg.kl_loss_type)
                kl_loss = agg_loss(kl, mask_f, mode, normalizer)
                loss = loss + cfg.kl_loss_coef * kl_loss
                additive["actor/kl_loss"] = kl_loss.detach()
            averaged = {"actor/pg_clipfrac": pg_clipfrac, "actor/ppo_kl": ppo_kl,
                        "actor/pg_clipfrac_lower": pg_clipfrac_lower}
            return loss, additive, averaged

        return run_updates(
            data, self.module, self.optimizer,
            mini_batch_size=mini_batch_size,
            micro_batch_size=cfg.ppo_micro_batch_size_per_gpu,
            max_token_len=cfg.ppo_max_token_len_per_gpu if cfg.get("use_dynamic_bsz", False) else None,
            epochs=cfg.get("ppo_epochs", 1), shuffle=cfg.get("shuffle", False),
            loss_mask=lambda mini: policy_loss_mask(mini, cfg.get("state_masking", False)),
            loss_agg_mode=mode, grad_clip=cfg.get("grad_clip", 1.0),
            micro_loss=micro_loss, prefix="actor",
        )
