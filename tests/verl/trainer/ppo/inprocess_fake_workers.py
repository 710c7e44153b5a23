"""IN-PROCESS FAKE worker groups for trainer tests: the worker-group methods of
docs/architecture.md on one local HF model, with no Ray and no FSDP.

They let the trainer's loop (fit, validation, checkpoints, resume) be tested fast and alone; the
real Ray worker groups are exercised by test_ray_trainer_workers.py. The PPO math comes from
core_algos, so a policy trained through them really learns.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from verl.protocol import DataProto
from verl.trainer.ppo import core_algos
from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits
from verl.workers.rollout.hf_rollout import HFRollout


def _forward(model, data: DataProto):
    """(logits over the response positions [B, R, V], last hidden states [B, R, H])."""
    response_length = data.batch["responses"].shape[1]
    out = model(input_ids=data.batch["input_ids"], attention_mask=data.batch["attention_mask"],
                position_ids=data.batch["position_ids"], output_hidden_states=True)
    logits = out.logits[:, -response_length - 1:-1]
    return logits, out.hidden_states[-1][:, -response_length - 1:-1]


def _minibatches(data: DataProto, prompts_per_minibatch: int, n: int):
    return data.split(prompts_per_minibatch * n)


class InProcessFakeActorRolloutRefWG:
    def __init__(self, model_dir, tokenizer, config):
        self.config = config  # the actor_rollout_ref node
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.actor.optim.lr, weight_decay=0.0)
        self.rollout = HFRollout(self.model, tokenizer, config.rollout)

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        return self.rollout.generate_sequences(prompts)

    @torch.no_grad()
    def compute_log_prob(self, data: DataProto) -> DataProto:
        logits, _ = _forward(self.model, data)
        return DataProto.from_dict({"old_log_probs": logprobs_from_logits(logits, data.batch["responses"]),
                                    "entropys": entropy_from_logits(logits)})

    @torch.no_grad()
    def compute_ref_log_prob(self, data: DataProto) -> DataProto:
        logits, _ = _forward(self.ref, data)
        return DataProto.from_dict({"ref_log_prob": logprobs_from_logits(logits, data.batch["responses"])})

    def update_actor(self, data: DataProto) -> DataProto:
        actor = self.config.actor
        metrics = {"actor/pg_loss": [], "actor/pg_clipfrac": [], "actor/ppo_kl": [], "actor/grad_norm": []}
        for part in _minibatches(data, actor.ppo_mini_batch_size, self.config.rollout.n):
            logits, _ = _forward(self.model, part)
            log_prob = logprobs_from_logits(logits, part.batch["responses"])
            on_policy = "old_log_probs" not in part.batch
            old_log_prob = log_prob.detach() if on_policy else part.batch["old_log_probs"]
            if on_policy:  # as the real actor: the sampler's log-probs against the update's own
                sampled = core_algos.sampled_token_mask(part.batch["response_mask"], part.non_tensor_batch)
                for key, value in core_algos.rollout_logprob_diff(part.batch["rollout_log_probs"], log_prob,
                                                                  sampled).items():
                    metrics.setdefault(key, []).append(value)
            pg_loss, clipfrac, ppo_kl, _ = core_algos.compute_policy_loss(
                old_log_prob, log_prob, part.batch["advantages"], part.batch["response_mask"],
                cliprange=actor.clip_ratio)
            self.optimizer.zero_grad()
            pg_loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), actor.grad_clip)
            self.optimizer.step()
            for key, value in zip(metrics, (pg_loss, clipfrac, ppo_kl, grad_norm)):
                metrics[key].append(float(value.detach()))
        return DataProto(meta_info={"metrics": metrics})

    def save_checkpoint(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()},
                   Path(directory) / "fake_actor.pt")

    def save_hf_model(self, directory: str) -> None:
        self.model.save_pretrained(directory)

    def load_checkpoint(self, directory: str) -> None:
        state = torch.load(Path(directory) / "fake_actor.pt")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class InProcessFakeCriticWG:
    """A value head on the hidden states of its own copy of the model."""

    def __init__(self, model_dir, config, n: int):
        self.config, self.n = config, n  # the critic node; rollout.n
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.head = torch.nn.Linear(self.model.config.hidden_size, 1)
        params = list(self.model.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.optim.lr, weight_decay=0.0)

    def _values(self, data: DataProto) -> torch.Tensor:
        _, hidden = _forward(self.model, data)
        return self.head(hidden).squeeze(-1) * data.batch["response_mask"]

    @torch.no_grad()
    def compute_values(self, data: DataProto) -> DataProto:
        return DataProto.from_dict({"values": self._values(data)})

    def update_critic(self, data: DataProto) -> DataProto:
        metrics = {"critic/vf_loss": [], "critic/vf_clipfrac": []}
        for part in _minibatches(data, self.config.ppo_mini_batch_size, self.n):
            vf_loss, clipfrac = core_algos.compute_value_loss(
                self._values(part), part.batch["returns"], part.batch["values"], part.batch["response_mask"],
                cliprange_value=self.config.cliprange_value)
            self.optimizer.zero_grad()
            vf_loss.backward()
            self.optimizer.step()
            metrics["critic/vf_loss"].append(vf_loss.item())
            metrics["critic/vf_clipfrac"].append(float(clipfrac))
        return DataProto(meta_info={"metrics": metrics})

    def save_checkpoint(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.model.state_dict(), "head": self.head.state_dict(),
                    "optimizer": self.optimizer.state_dict()}, Path(directory) / "fake_critic.pt")

    def load_checkpoint(self, directory: str) -> None:
        state = torch.load(Path(directory) / "fake_critic.pt")
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
