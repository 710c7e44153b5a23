"""The PPO policy on one data-parallel rank: log-probs and the clipped-surrogate update.

Knows nothing about ranks or sharding: `module` may be FSDP-sharded or a plain HF model, and the
gradient averaging happens inside it. Batches follow docs/architecture.md (prompts left padded,
responses right padded); the logits that predict response token t sit at position P + t - 1.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from verl.protocol import DataProto
from verl.trainer.ppo.core_algos import (agg_loss, batch_state_mask, compute_policy_loss, kl_penalty,
                                         rollout_logprob_diff, sampled_token_mask)
from verl.utils.distributed import all_reduce_max, all_reduce_mean
from verl.utils.packing import check_packable, model_layout
from verl.utils.seqlen_balancing import map_micro_batches
from verl.utils.torch_functional import HEAD_CHUNK_TOKENS, head_scores, token_scores_in_chunks
from verl.workers.update_loop import run_updates

# HF config keys of models that transform their logits after the LM head (Gemma's soft-capping,
# Granite's and Cohere's scaling); log-probs are computed from the head's output, so they are refused.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logits_soft_cap", "logits_scaling", "logit_scale")


def check_plain_head(model_config) -> None:
    """Raise, naming the key, when the model transforms its logits after its output embedding."""
    transforms = [f"{key}={getattr(model_config, key)}" for key in LOGIT_TRANSFORMS
                  if getattr(model_config, key, None) is not None]
    if transforms:
        raise ValueError(f"a model whose logits are transformed after the LM head ({', '.join(transforms)}) is "
                         "not supported: log-probs are computed from the head's output")


def response_scores(module: torch.nn.Module, batch: dict, scored_BR: torch.Tensor, temperature: float,
                    with_entropy: bool, entropy_grad: bool = False, packed: bool = False):
    """(log-probs [N], entropies [N] or None) of the N response tokens where `scored_BR` is true (row-major),
    under the model's logits divided by the sampling temperature.

    The LM head runs on the positions that predict those tokens only (not on the prompt, and not on
    retrieved blocks, which are most of an agent's response and carry no loss), HEAD_CHUNK_TOKENS
    of them at a time (torch_functional.token_scores_in_chunks). `packed`: the micro-batch runs as one
    row of its real tokens (packing.PackedLayout). The entropy carries gradient only when `entropy_grad`.
    """
    layout = model_layout(batch, batch["responses"].shape[1], packed)
    labels = batch["responses"][scored_BR]
    head = module.get_output_embeddings()

    def score(hidden: torch.Tensor):
        # head.forward: the head's own computation, without calling this hook again
        return token_scores_in_chunks(hidden, labels, head.forward, temperature, HEAD_CHUNK_TOKENS,
                                      with_entropy, entropy_grad)

    with head_scores(head, layout.scoring_positions(scored_BR), score) as scores:
        module(**layout.inputs, use_cache=False)
    (log_probs_and_entropy,) = scores
    return log_probs_and_entropy


def policy_loss_mask(data: DataProto, state_masking: bool) -> torch.Tensor:
    """The response tokens the policy loss counts (core_algos.state_mask of the batch)."""
    return batch_state_mask(data.batch, state_masking)


class DataParallelPPOActor:
    def __init__(self, config: DictConfig, module: torch.nn.Module, optimizer=None, mini_batch_size: int = 0,
                 state_masking: bool | None = None, use_remove_padding: bool = False):
        """`config`: the `actor` (or `ref`) subtree; `mini_batch_size`: rows per rank per optimizer step;
        `state_masking`: the actor's setting (default: config.state_masking), which also decides where
        log-probs are computed (a reference model must score the same tokens as the actor);
        `use_remove_padding`: actor_rollout_ref.model's, each micro-batch runs as one packed row."""
        check_plain_head(module.config)
        if use_remove_padding:
            check_packable(module, "actor_rollout_ref.model.use_remove_padding")
        self.config = config
        self.module = module
        self.optimizer = optimizer
        self.mini_batch_size = mini_batch_size
        self.state_masking = bool(config.state_masking if state_masking is None else state_masking)
        self.use_remove_padding = use_remove_padding

    def _log_probs(self, micro: DataProto, temperature: float, with_entropy: bool, entropy_grad: bool = False):
        """(log-probs, entropies or None), [B, R]: computed where the policy loss counts tokens, 0 elsewhere
        (padding, and retrieved blocks under state masking) whatever the micro-batch."""
        scored = policy_loss_mask(micro, self.state_masking).bool()
        log_probs, entropy = response_scores(self.module, micro.batch, scored, temperature, with_entropy,
                                             entropy_grad, self.use_remove_padding)

        def in_rows(values: torch.Tensor) -> torch.Tensor:
            return torch.zeros(scored.shape, dtype=values.dtype, device=values.device).masked_scatter(scored, values)

        return in_rows(log_probs), in_rows(entropy) if with_entropy else None

    @torch.no_grad()
    def compute_log_prob(self, data: DataProto, micro_batch_size: int, max_token_len: int | None = None,
                         with_entropy: bool = True):
        """-> (log_probs [B, R], entropys [B, R] or None), computed `micro_batch_size` rows at a time,
        or in token-budget micro-batches of at most `max_token_len` padded tokens when given."""
        temperature = data.meta_info.get("temperature", 1.0)
        self.module.eval()

        def forward(micro: DataProto) -> torch.Tensor:
            log_probs, entropy = self._log_probs(micro, temperature, with_entropy)
            return torch.stack([log_probs, entropy]) if with_entropy else log_probs.unsqueeze(0)

        # rows on dim 1: map_micro_batches concatenates and reorders along dim 0
        stacked = map_micro_batches(data, micro_batch_size, max_token_len, lambda m: forward(m).transpose(0, 1))
        stacked = stacked.transpose(0, 1)
        return stacked[0], stacked[1] if with_entropy else None

    def _rows_without_advantage(self, data: DataProto) -> torch.Tensor:
        """Per row: no scored token has a non-zero advantage (a policy-gradient loss alone gives the row no
        gradient: GRPO's groups that all scored alike, wrong samples weighed 0, a guide-only control's own
        samples)."""
        scored = policy_loss_mask(data, self.state_masking).bool()
        return ~((data.batch["advantages"] != 0) & scored).any(dim=-1)

    def update_policy(self, data: DataProto) -> dict[str, float]:
        cfg = self.config
        temperature = data.meta_info.get("temperature", 1.0)
        mode, entropy_coeff = cfg.loss_agg_mode, cfg.entropy_coeff
        mini_batch_size = self.mini_batch_size or len(data)
        on_policy = "old_log_probs" not in data.batch
        if on_policy and (cfg.ppo_epochs > 1 or mini_batch_size < len(data)):
            raise ValueError("update_policy without old_log_probs needs one epoch over one mini-batch "
                             f"(ppo_epochs={cfg.ppo_epochs}, {len(data)} rows, mini-batch {mini_batch_size})")
        # On-policy, this forward is the trainer's only look at the sampled tokens: the engine's
        # log-probs are compared with it here (rollout/logprob_diff_*), per micro-batch
        # (engine's, this forward's, the policy's own tokens of rows not guided).
        compared = [] if on_policy and "rollout_log_probs" in data.batch else None

        def micro_loss(micro: DataProto, normalizer: torch.Tensor):
            batch = micro.batch
            mask = policy_loss_mask(micro, self.state_masking)
            # the entropy is always reported; it carries gradient only when it is in the loss
            log_prob, entropy = self._log_probs(micro, temperature, True, entropy_grad=entropy_coeff != 0)
            # On-policy (the trainer skipped the recomputation): the sampling policy IS the current one.
            old_log_prob = log_prob.detach() if on_policy else batch["old_log_probs"]
            if compared is not None:
                sampled = sampled_token_mask(mask, micro.non_tensor_batch)
                compared.append((batch["rollout_log_probs"], old_log_prob, sampled))
            pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower = compute_policy_loss(
                old_log_prob, log_prob, batch["advantages"], mask,
                cliprange=cfg.clip_ratio, cliprange_low=cfg.clip_ratio_low,
                cliprange_high=cfg.clip_ratio_high, clip_ratio_c=cfg.clip_ratio_c,
                loss_agg_mode=mode, normalizer=normalizer,
            )
            mask_f = mask.to(log_prob.dtype)
            entropy_term = agg_loss(entropy, mask_f, mode, normalizer)
            loss = pg_loss - entropy_coeff * entropy_term
            additive = {"actor/pg_loss": pg_loss.detach(), "actor/entropy": entropy_term.detach()}
            if cfg.use_kl_loss:
                kl = kl_penalty(log_prob, batch["ref_log_prob"], cfg.kl_loss_type)
                kl_loss = agg_loss(kl, mask_f, mode, normalizer)
                loss = loss + cfg.kl_loss_coef * kl_loss
                additive["actor/kl_loss"] = kl_loss.detach()
            averaged = {"actor/pg_clipfrac": pg_clipfrac, "actor/ppo_kl": ppo_kl,
                        "actor/pg_clipfrac_lower": pg_clipfrac_lower}
            return loss, additive, averaged

        metrics = run_updates(
            data, self.module, self.optimizer,
            mini_batch_size=mini_batch_size,
            micro_batch_size=cfg.ppo_micro_batch_size_per_gpu,
            max_token_len=cfg.ppo_max_token_len_per_gpu if cfg.use_dynamic_bsz else None,
            epochs=cfg.ppo_epochs, shuffle=cfg.shuffle,
            loss_mask=lambda mini: policy_loss_mask(mini, self.state_masking),
            loss_agg_mode=mode, grad_clip=cfg.grad_clip,
            micro_loss=micro_loss, prefix="actor",
            inert_rows=None if entropy_coeff != 0 or cfg.use_kl_loss else self._rows_without_advantage,
        )
        if compared is not None:  # every rank has rows (the worker group pads), so every rank reduces
            diff = rollout_logprob_diff(*(torch.cat(parts) for parts in zip(*compared)))
            metrics.update(all_reduce_max({"rollout/logprob_diff_max": diff["rollout/logprob_diff_max"]}))
            metrics.update(all_reduce_mean({"rollout/logprob_diff_mean": diff["rollout/logprob_diff_mean"]}))
        return metrics
