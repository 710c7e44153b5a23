"""The PPO value function on one data-parallel rank: per-token values and the clipped value loss."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from verl.protocol import DataProto
from verl.trainer.ppo.core_algos import batch_state_mask, compute_value_loss
from verl.utils.packing import check_packable, model_layout
from verl.utils.seqlen_balancing import map_micro_batches
from verl.workers.update_loop import run_updates


class DataParallelPPOCritic:
    def __init__(self, config: DictConfig, module: torch.nn.Module, optimizer=None, mini_batch_size: int = 0):
        """`config`: the `critic` subtree; `module` returns [B, T] values (verl.utils.model.ValueModel);
        with config.model.use_remove_padding each micro-batch runs as one packed row."""
        if config.model.use_remove_padding:
            check_packable(module, "critic.model.use_remove_padding")
        self.config = config
        self.module = module
        self.optimizer = optimizer
        self.mini_batch_size = mini_batch_size

    def loss_mask(self, data: DataProto) -> torch.Tensor:
        """The tokens the value loss counts: without retrieved ones under critic.state_masking."""
        return batch_state_mask(data.batch, self.config.state_masking)

    def _values(self, batch: dict) -> torch.Tensor:
        # V(s_t) for response token t is read where the model has seen the prefix before t,
        # the same positions whose logits predict t.
        layout = model_layout(batch, batch["responses"].shape[1], self.config.model.use_remove_padding)
        return layout.at_scoring_positions(self.module(**layout.inputs).float())

    @torch.no_grad()
    def compute_values(self, data: DataProto) -> torch.Tensor:
        self.module.eval()
        micro = self.config.forward_micro_batch_size_per_gpu
        budget = self.config.forward_max_token_len_per_gpu if self.config.use_dynamic_bsz else None
        values = map_micro_batches(data, micro, budget, lambda m: self._values(m.batch))
        return values * data.batch["response_mask"]

    def update_critic(self, data: DataProto) -> dict[str, float]:
        cfg = self.config

        def micro_loss(micro: DataProto, normalizer: torch.Tensor):
            vpreds = self._values(micro.batch)
            vf_loss, vf_clipfrac = compute_value_loss(
                vpreds, micro.batch["returns"], micro.batch["values"], self.loss_mask(micro),
                cliprange_value=cfg.cliprange_value, loss_agg_mode=cfg.loss_agg_mode, normalizer=normalizer,
            )
            return vf_loss, {"critic/vf_loss": vf_loss.detach()}, {"critic/vf_clipfrac": vf_clipfrac}

        return run_updates(
            data, self.module, self.optimizer,
            mini_batch_size=self.mini_batch_size or len(data),
            micro_batch_size=cfg.ppo_micro_batch_size_per_gpu,
            max_token_len=cfg.ppo_max_token_len_per_gpu if cfg.use_dynamic_bsz else None,
            epochs=cfg.ppo_epochs, shuffle=cfg.shuffle,
            loss_mask=self.loss_mask, loss_agg_mode=cfg.loss_agg_mode, grad_clip=cfg.grad_clip,
            micro_loss=micro_loss, prefix="critic",
        )
