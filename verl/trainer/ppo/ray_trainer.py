"""The PPO/GRPO driver: one process that feeds batches through the worker groups.

`RayPPOTrainer.fit()` is the recipe, read top to bottom: rollout -> reward -> old/ref log-probs
-> values -> KL penalty -> advantages -> critic update -> actor update -> metrics -> validation
-> checkpoint. The worker groups (`actor_rollout_wg`, `critic_wg`) are built by `main_ppo` and
called through the methods listed in docs/architecture.md; everything here runs on the driver.

`actor_rollout_ref.rollout.mode` says how the rollout loop reaches the engines: sync hands it the
worker group's batch `generate_sequences`; async the workers' rollout servers
(verl/trainer/ppo/rollout_servers.py), woken before every rollout (new weights load once per step).
With `actor_rollout_ref.rollout.lag=1` (async mode) the trainer runs one step off: while a step
trains, the next step's rollout runs on the servers with the weights they hold (`sampling_ahead`),
and each batch is trained against the log-probs of the policy that sampled it.
"""
from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from verl.protocol import DataProto
from verl.trainer.config import need_critic, need_reference_policy
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.metric_utils import compute_data_metrics, compute_throughput_metrics, compute_timing_metrics
from verl.trainer.ppo.reward import RewardManager, reward_metrics
from verl.trainer.ppo.rollout_loop import load_rollout_loop
from verl.trainer.ppo.rollout_servers import ServerPool
from verl.trainer.steps import is_due, run_length
from verl.utils import checkpoint
from verl.utils.dataset import RLHFDataset, StatefulLoader
from verl.utils.torch_functional import masked_mean
from verl.utils.tracking import Tracking
from verl.workers.rollout.base import concat_rollouts


@contextmanager
def timer(name: str, timing: dict):
    start = time.perf_counter()
    yield
    timing[name] = timing.get(name, 0.0) + time.perf_counter() - start


def timed(function: Callable, *args):
    """(function(*args), the seconds it took)."""
    start = time.perf_counter()
    return function(*args), time.perf_counter() - start


@dataclass
class SampledAhead:
    """The next step's scored batch, sampled while this step trained (rollout.lag=1)."""

    batch: DataProto
    metrics: dict
    loader_state: dict  # the prompt loader before it served them: where a resumed run reads again


def total_training_steps(config: DictConfig, train_dataset_rows: int) -> int:
    """The run's steps (verl.trainer.steps.run_length) with full batches of the training set."""
    trainer = config.trainer
    total = run_length(train_dataset_rows // config.data.train_batch_size, trainer.total_epochs,
                       trainer.total_training_steps)
    if total <= 0:
        raise ValueError(f"no training step: {train_dataset_rows} rows, data.train_batch_size="
                         f"{config.data.train_batch_size}, trainer.total_epochs={config.trainer.total_epochs}")
    return total


def mean_metrics(metrics: dict) -> dict[str, float]:
    """A worker group's metrics (one value, or list of values, per rank) reduced to their means."""
    return {key: float(np.mean(value)) for key, value in metrics.items()}


def add_columns(batch: DataProto, output: DataProto, keys: list[str]) -> DataProto:
    """Copy the tensors `keys` of a worker's output into `batch` (its meta_info is not merged)."""
    return batch.union(output.select(batch_keys=keys, non_tensor_batch_keys=[], meta_info_keys=[]))


def first_groups(index: np.ndarray, count: int) -> np.ndarray:
    """Indices of the rows of the first `count` groups (ids in `index`, in order of first appearance).

    >>> first_groups(np.array(["a", "a", "b", "c", "c"]), 2).tolist()
    [0, 1, 2]
    """
    kept = set(list(dict.fromkeys(index))[:count])
    return np.array([i for i, uid in enumerate(index) if uid in kept], dtype=np.int64)


def filter_values(batch: DataProto, extras: dict[str, list[float]], metric: str) -> np.ndarray:
    """The per-row values algorithm.filter_groups.metric names: the sequence score, or an extra
    number the reward function returned (e.g. em)."""
    if metric in ("score", "seq_final_reward"):
        return batch.batch["token_level_scores"].sum(-1).numpy()
    if metric not in extras:
        raise ValueError(f"algorithm.filter_groups.metric={metric!r}: the reward returns no such key; "
                         f"known: score, seq_final_reward, {', '.join(sorted(extras))}")
    return np.asarray(extras[metric], dtype=np.float64)


def keep_rows(batch: DataProto, extras: dict[str, list[float]], keep: np.ndarray) -> tuple[DataProto, dict]:
    """The rows of `batch` and of the reward's per-row `extras` where `keep` ((B,) bool) is true."""
    rows = np.flatnonzero(keep)
    return batch[rows], {key: np.asarray(values)[rows].tolist() for key, values in extras.items()}


def with_uids(prompts: DataProto) -> DataProto:
    """`prompts`, each given a new id in the non-tensor column `uid` (its GRPO group)."""
    prompts.non_tensor_batch["uid"] = np.array([str(uuid.uuid4()) for _ in range(len(prompts))], dtype=object)
    return prompts


class RayPPOTrainer:
    def __init__(self, config: DictConfig, tokenizer, actor_rollout_wg, critic_wg, reward_fn: RewardManager,
                 val_reward_fn: RewardManager | None, train_dataset: RLHFDataset, val_dataset: RLHFDataset | None,
                 tracker: Tracking | None = None, servers: ServerPool | None = None):
        """`servers`: the rollout servers in async mode; None builds them over `actor_rollout_wg`'s
        actors (a test passes those of a worker in its own process)."""
        self.config = config
        self.tokenizer = tokenizer
        self.actor_rollout_wg, self.critic_wg = actor_rollout_wg, critic_wg
        self.reward_fn, self.val_reward_fn = reward_fn, val_reward_fn
        self.use_critic = need_critic(config)
        self.use_reference_policy = need_reference_policy(config)
        if self.use_critic and critic_wg is None:
            raise ValueError(f"algorithm.adv_estimator={config.algorithm.adv_estimator} needs a critic worker group")
        data = config.data
        self.train_loader = StatefulLoader(train_dataset, data.train_batch_size, shuffle=data.shuffle, seed=data.seed)
        self.val_loader = None
        if val_dataset is not None and val_reward_fn is not None:
            self.val_loader = StatefulLoader(val_dataset, data.val_batch_size or len(val_dataset), shuffle=False,
                                             drop_last=False)
        self.total_training_steps = total_training_steps(config, len(train_dataset))
        kl_ctrl = config.algorithm.kl_ctrl
        self.kl_ctrl = core_algos.get_kl_controller(kl_ctrl.type, kl_ctrl.kl_coef, kl_ctrl.target_kl, kl_ctrl.horizon)
        self.servers = None
        generate = actor_rollout_wg.generate_sequences
        if config.actor_rollout_ref.rollout.mode == "async":
            self.servers = servers or ServerPool.of_worker_group(actor_rollout_wg, config.actor_rollout_ref.rollout,
                                                                 tokenizer.pad_token_id)
            generate = self.servers.generate_batch
        self.rollout_loop = load_rollout_loop(config, tokenizer, generate, self.servers)
        self.one_step_off = config.actor_rollout_ref.rollout.lag == 1
        self.ahead: SampledAhead | None = None
        self.rollout_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-ahead")
        self.tracker = tracker or Tracking(config.trainer.project_name, config.trainer.experiment_name,
                                           backends=config.trainer.logger,
                                           config=OmegaConf.to_container(config, resolve=True),
                                           jsonl_path=str(Path(config.trainer.default_local_dir) / "metrics.jsonl"))
        self.global_steps = 0
        self.history: list[dict] = []  # every step's metrics, for tests and scripts

    # ------------------------------------------------------------------ the recipe

    def fit(self) -> list[dict]:
        self.load_checkpoint()
        if self.val_loader is not None and self.config.trainer.val_before_train and self.global_steps == 0:
            self.log(self.validate())
        prompt_batches = self.prompt_batches()
        while self.global_steps < self.total_training_steps:
            self.global_steps += 1
            metrics, timing = {}, {}
            with timer("step", timing):
                with timer("gen", timing):
                    batch, sampling_metrics = self.next_scored_batch(prompt_batches)
                metrics.update(sampling_metrics)
                if len(batch):
                    with self.sampling_ahead(prompt_batches, timing):
                        metrics.update(self.train_on(batch, timing))
            is_last_step = self.global_steps >= self.total_training_steps
            if is_due(self.config.trainer.test_freq, self.global_steps, is_last_step) and self.val_loader is not None:
                with timer("testing", timing):
                    metrics.update(self.validate())
            if is_due(self.config.trainer.save_freq, self.global_steps, is_last_step):
                with timer("save_checkpoint", timing):
                    self.save_checkpoint()
            if len(batch):
                metrics.update(compute_data_metrics(batch=batch, use_critic=self.use_critic))
                metrics.update(compute_timing_metrics(batch=batch, timing_raw=timing))
                metrics.update(compute_throughput_metrics(batch=batch, timing_raw=timing, n_devices=self.n_workers))
            self.log(metrics)
        self.tracker.finish()
        return self.history

    def next_scored_batch(self, prompt_batches) -> tuple[DataProto, dict]:
        """The step's scored batch: the one sampled while the last step trained (rollout.lag=1), else
        rollouts sampled now with the current weights; with algorithm.guides.only, the prompts' guides,
        and the servers (async mode) are left asleep: nothing samples."""
        if self.ahead is not None:
            ahead, self.ahead = self.ahead, None
            return ahead.batch, ahead.metrics
        if self.config.algorithm.guides.only:
            return self.demonstration_batch(next(prompt_batches))
        self.wake_servers()
        return self.sample_scored_batch(prompt_batches)

    @contextmanager
    def sampling_ahead(self, prompt_batches, timing: dict):
        """rollout.lag=1 (one step off): the next step's rollouts are sampled and scored on a thread of
        their own, on the servers and with the weights they hold, while the body trains this step (the
        actor update included); they are joined when it ends, and the servers get the updated weights
        only at the next wake, so every batch is trained one update after the policy that sampled it.
        `timing_s/gen_ahead` is their duration, `timing_s/gen_ahead_wait` the part training left
        uncovered. At lag 0, and at the last step, the body runs alone."""
        if not self.one_step_off or self.global_steps >= self.total_training_steps:
            yield
            return
        loader_state = self.train_loader.state_dict()
        self.wake_servers()
        sampling = self.rollout_thread.submit(timed, self.sample_scored_batch, prompt_batches)
        yield
        with timer("gen_ahead_wait", timing):
            (batch, metrics), timing["gen_ahead"] = sampling.result()
        self.ahead = SampledAhead(batch, metrics, loader_state)

    def train_on(self, batch: DataProto, timing: dict) -> dict:
        """Old/ref log-probs, values, KL in the reward, advantages and the updates, for one scored batch."""
        metrics = {}
        if self.one_step_off:
            self.use_sampler_log_probs(batch)
        elif self.recompute_old_log_probs:
            with timer("old_log_prob", timing):
                metrics.update(self.compute_old_log_probs(batch))
        if self.use_reference_policy:
            with timer("ref", timing):
                add_columns(batch, self.actor_rollout_wg.compute_ref_log_prob(batch), ["ref_log_prob"])
        if self.use_critic:
            with timer("values", timing):
                add_columns(batch, self.critic_wg.compute_values(batch), ["values"])
        with timer("adv", timing):
            metrics.update(self.apply_kl_in_reward(batch))
            self.compute_advantages(batch)
            metrics.update(self.guide_metrics(batch))
        if self.use_critic:
            with timer("update_critic", timing):
                metrics.update(mean_metrics(self.critic_wg.update_critic(batch).meta_info["metrics"]))
        if self.global_steps > self.config.trainer.critic_warmup:
            with timer("update_actor", timing):
                metrics.update(mean_metrics(self.actor_rollout_wg.update_actor(batch).meta_info["metrics"]))
        return metrics

    # ------------------------------------------------------------------ phases

    def prompt_batches(self):
        """Training prompts batch after batch, epoch after epoch (the loader resumes mid-epoch)."""
        while True:
            yield from self.train_loader

    @property
    def recompute_old_log_probs(self) -> bool:
        """False when the update is exactly on-policy (one epoch, one mini-batch, nothing else reads
        old_log_probs): the actor then takes its own detached log-probs as the old ones, ratio 1,
        the same gradient without a forward pass over the batch."""
        actor = self.config.actor_rollout_ref.actor
        one_update = actor.ppo_epochs == 1 and actor.ppo_mini_batch_size >= self.config.data.train_batch_size
        return not one_update or self.config.algorithm.use_kl_in_reward

    def sample_scored_batch(self, prompt_batches) -> tuple[DataProto, dict]:
        """Rollouts of the next prompts, scored. With algorithm.filter_groups (DAPO's dynamic
        sampling), groups whose rows all score the same are dropped and more prompts are rolled out
        (a whole batch, or with refill=missing as many as groups are missing) until
        data.train_batch_size groups are kept or max_num_gen_batches batches were generated;
        the batch then holds the first train_batch_size kept groups (fewer when the cap was hit).
        Score metrics (`critic/score/*`) describe the trained batch; `sampling/score_mean` and
        `sampling/<extra>` (the reward's extra numbers, e.g. em when the score is f1) describe every
        row the policy sampled, i.e. the policy itself: rows a rollout loop marks in the non-tensor
        column `guided` (off-policy demonstrations put in a group) are trained on but left out of them.
        With algorithm.guides.keep=unsolved, a guide whose group the policy solved is dropped right
        after scoring, so the batch may hold fewer rows than prompts x rollout.n."""
        filter_cfg = self.config.algorithm.filter_groups
        kept, rollout_metrics, scores, own_extras, generated = [], defaultdict(list), [], defaultdict(list), 0
        wanted = self.config.data.train_batch_size
        while True:
            prompts = next(prompt_batches)
            if kept and filter_cfg.refill == "missing":
                prompts = prompts[:wanted - groups]
            batch = self.repeat_for_sampling(prompts)
            batch, loop_metrics = self.rollout(batch)
            extras = self.compute_scores(batch)
            generated += 1
            for key, value in {**loop_metrics, **reward_metrics(extras)}.items():
                rollout_metrics[key].append((value, len(batch)))
            row_scores = batch.batch["token_level_scores"].sum(-1).numpy()
            guided = core_algos.guided_rows(batch.non_tensor_batch, len(batch))
            scores.extend(row_scores[~guided].tolist())
            for key, values in extras.items():
                own_extras[key].extend(np.asarray(values, dtype=np.float64)[~guided].tolist())
            if self.config.algorithm.guides.keep == "unsolved":
                keep = core_algos.keep_unsolved_guides(batch.non_tensor_batch["uid"], row_scores, guided)
                batch, extras = keep_rows(batch, extras, keep)
            if not filter_cfg.enable:
                kept.append(batch)
                break
            values = filter_values(batch, extras, filter_cfg.metric)
            keep = core_algos.varied_groups(batch.non_tensor_batch["uid"], values)
            kept.append(batch[np.flatnonzero(keep)])
            groups = sum(len(set(b.non_tensor_batch["uid"])) for b in kept)
            if groups >= wanted or 0 < filter_cfg.max_num_gen_batches <= generated:
                break
        # batches of different prompts and turns have different widths
        batch = concat_rollouts(kept, self.tokenizer.pad_token_id) if len(kept) > 1 else kept[0]
        if len(set(batch.non_tensor_batch["uid"])) > wanted:
            batch = batch[first_groups(batch.non_tensor_batch["uid"], wanted)]
        # a batch's means count by its rows: a refill of the missing groups is smaller than a whole batch
        metrics = {key: float(np.sum(values)) if key.startswith("timing_s/") else float(np.average(values, weights=rows))
                   for key, (values, rows) in ((k, zip(*v)) for k, v in rollout_metrics.items())}
        metrics["sampling/score_mean"] = float(np.mean(scores))
        metrics.update(reward_metrics(own_extras, prefix="sampling"))
        if filter_cfg.enable:
            metrics["sampling/num_gen_batches"] = float(generated)
            metrics["sampling/kept_groups"] = float(len(set(batch.non_tensor_batch["uid"]))) if len(batch) else 0.0
        return batch, metrics

    def demonstration_batch(self, prompts: DataProto) -> tuple[DataProto, dict]:
        """algorithm.guides.only: the guides of the prompts (the rollout loop's `demonstrations`), scored,
        one row per prompt that has one; nothing is sampled, so there are no `sampling/*` metrics."""
        batch = self.rollout_loop.demonstrations(with_uids(prompts))
        metrics = batch.meta_info.pop("metrics", {})
        metrics.update(reward_metrics(self.compute_scores(batch)))
        return batch, metrics

    def repeat_for_sampling(self, prompts: DataProto) -> DataProto:
        """Give every prompt a uid (its GRPO group), then repeat it rollout.n times, interleaved."""
        return with_uids(prompts).repeat(self.config.actor_rollout_ref.rollout.n, interleave=True)

    def rollout(self, prompts: DataProto) -> tuple[DataProto, dict]:
        """Trajectories from the configured RolloutLoop, and the loop's own metrics. In async mode each
        row records in `weights_version` the version of the weights its server sampled it with (the
        servers were woken before; no weights load until the next wake)."""
        batch = self.rollout_loop.run(prompts)
        metrics = batch.meta_info.pop("metrics", {})
        if self.servers is not None:
            batch.non_tensor_batch["weights_version"] = np.full(len(batch), self.servers.weights_version)
        return batch, metrics

    def compute_scores(self, batch: DataProto) -> dict[str, list[float]]:
        """token_level_scores into the batch; returns the reward's extra numbers per row."""
        scores, extras = self.reward_fn(batch)
        batch.batch["token_level_scores"] = scores
        return extras

    def compute_old_log_probs(self, batch: DataProto) -> dict:
        """old_log_probs into the batch; returns the rollout policy's entropy over the scored tokens
        (`actor/entropy` is the updated policy's, logged by the update) and how far the engine's
        log-probs are from them (`rollout/logprob_diff_*`; the on-policy update logs its own)."""
        output = self.actor_rollout_wg.compute_log_prob(batch)
        add_columns(batch, output, ["old_log_probs"])
        scored = self.policy_loss_mask(batch)
        sampled = core_algos.sampled_token_mask(scored, batch.non_tensor_batch)
        return {"actor/entropy_at_rollout": float(masked_mean(output.batch["entropys"], scored)),
                **core_algos.rollout_logprob_diff(batch.batch["rollout_log_probs"], batch.batch["old_log_probs"],
                                                  sampled)}

    def use_sampler_log_probs(self, batch: DataProto) -> None:
        """old_log_probs := the batch's rollout_log_probs over the policy-loss mask (one step off: the
        ratio is taken against the policy that sampled, which the actor has moved past)."""
        own_tokens = core_algos.sampled_token_mask(core_algos.batch_state_mask(batch.batch, True),
                                                   batch.non_tensor_batch)
        batch.batch["old_log_probs"] = core_algos.sampler_old_log_probs(
            batch.batch["rollout_log_probs"], self.policy_loss_mask(batch), own_tokens)

    def policy_loss_mask(self, batch: DataProto) -> torch.Tensor:
        """The response tokens the policy loss counts (actor.state_masking)."""
        return core_algos.batch_state_mask(batch.batch, self.config.actor_rollout_ref.actor.state_masking)

    def apply_kl_in_reward(self, batch: DataProto) -> dict:
        """token_level_rewards = scores - beta * KL(old || ref) per token, when use_kl_in_reward."""
        scores = batch.batch["token_level_scores"]
        if not self.config.algorithm.use_kl_in_reward:
            batch.batch["token_level_rewards"] = scores
            return {}
        rewards, metrics = core_algos.apply_kl_penalty(
            scores, batch.batch["old_log_probs"], batch.batch["ref_log_prob"], batch.batch["response_mask"],
            kl_coef=self.kl_ctrl.value, kl_penalty_type=self.config.algorithm.kl_penalty)
        batch.batch["token_level_rewards"] = rewards
        self.kl_ctrl.update(current_kl=metrics["actor/reward_kl_penalty"], n_steps=len(batch))
        return metrics

    def compute_advantages(self, batch: DataProto) -> None:
        """advantages and returns by the estimator registered as algorithm.adv_estimator."""
        algo = self.config.algorithm
        estimator = core_algos.get_adv_estimator_fn(algo.adv_estimator)
        # GAE walks the same tokens the critic learns on: with critic.state_masking, retrieved tokens
        # are skipped (no TD step), as if cut out of the sequence.
        masking = self.config.critic.state_masking and core_algos.adv_estimator_needs_critic(algo.adv_estimator)
        mask = core_algos.batch_state_mask(batch.batch, masking)
        settings = {"gamma": algo.gamma, "lam": algo.lam, "norm_adv_by_std_in_grpo": algo.norm_adv_by_std_in_grpo}
        if algo.guides.only:
            # no own samples to measure the guides against: each is weighed as in a group it alone solved
            weight = core_algos.unsolved_group_guide_advantage(estimator, self.config.actor_rollout_ref.rollout.n,
                                                               **settings)
            advantages = returns = weight * mask.to(torch.float32)
        else:
            advantages, returns = estimator(token_level_rewards=batch.batch["token_level_rewards"],
                                            values=batch.batch.get("values"), response_mask=mask,
                                            index=batch.non_tensor_batch["uid"], **settings)
        # the critic's targets stay the returns as estimated; only the policy's step is shaped
        advantages = core_algos.scale_negative_advantages(advantages, algo.negative_advantage_scale)
        guided = core_algos.guided_rows(batch.non_tensor_batch, len(batch))
        advantages = core_algos.weight_rows(advantages, ~guided, algo.guides.sampled_weight)
        advantages = core_algos.weight_rows(advantages, guided, algo.guides.guided_weight)
        batch.batch["advantages"], batch.batch["returns"] = advantages, returns

    def guide_metrics(self, batch: DataProto) -> dict[str, float]:
        """`adv/guided_rows`: rows marked guided in the trained batch; `adv/guide_positive_share`: the
        share of the batch's positive advantage (over the policy-loss mask) that those rows carry."""
        guided = core_algos.guided_rows(batch.non_tensor_batch, len(batch))
        share = core_algos.positive_advantage_share(batch.batch["advantages"], self.policy_loss_mask(batch), guided)
        return {"adv/guided_rows": float(guided.sum()), "adv/guide_positive_share": share}

    def validate(self) -> dict[str, float]:
        """Greedy (val_kwargs) rollouts over EVERY validation row; mean score per data source."""
        n = self.config.actor_rollout_ref.rollout.val_kwargs.n
        scores_by_source, loop_metrics, extras_all = defaultdict(list), defaultdict(list), defaultdict(list)
        lengths = []
        for prompts in self.val_loader:
            self.wake_servers()
            batch = self.rollout_loop.run(prompts.repeat(n, interleave=True), validate=True)
            for key, value in batch.meta_info.get("metrics", {}).items():
                loop_metrics[key].append(value)
            scores, extras = self.val_reward_fn(batch)
            for source, score in zip(batch.non_tensor_batch["data_source"], scores.sum(-1).tolist()):
                scores_by_source[source].append(score)
            lengths.extend(batch.batch["response_mask"].sum(-1).tolist())
            for key, values in extras.items():
                extras_all[key].extend(values)
        metrics = {f"val/test_score/{source}": float(np.mean(s)) for source, s in scores_by_source.items()}
        metrics["val/num_rows"] = float(sum(len(s) for s in scores_by_source.values()))
        metrics["val/response_length/mean"] = float(np.mean(lengths))
        metrics.update({f"val/{key}": float(np.mean(v)) for key, v in loop_metrics.items()})
        metrics.update(reward_metrics(extras_all, prefix="val/reward"))
        return metrics

    # ------------------------------------------------------------------ checkpoints and plumbing

    def save_checkpoint(self) -> None:
        root = self.config.trainer.default_local_dir
        directory = checkpoint.step_dir(root, self.global_steps)
        self.actor_rollout_wg.save_checkpoint(str(directory / "actor"))
        # A plain HF copy beside the resumable state, so evaluation and the next stage load it directly.
        self.actor_rollout_wg.save_hf_model(str(directory / "actor" / "huggingface"))
        if self.use_critic:
            self.critic_wg.save_checkpoint(str(directory / "critic"))
        # a batch sampled ahead is not trained yet: a resumed run samples its prompts again
        loader_state = self.ahead.loader_state if self.ahead else self.train_loader.state_dict()
        checkpoint.save_trainer_state(directory, self.global_steps, loader_state,
                                      extra={"kl_coef": float(self.kl_ctrl.value)})
        checkpoint.mark_latest(root, self.global_steps)
        checkpoint.prune(root, "actor", self.config.trainer.max_actor_ckpt_to_keep)
        checkpoint.prune(root, "critic", self.config.trainer.max_critic_ckpt_to_keep)

    def load_checkpoint(self) -> None:
        trainer = self.config.trainer
        directory = checkpoint.resolve_resume_dir(trainer.resume_mode, trainer.default_local_dir)
        if directory is None:
            self.tracker.rewind(None)
            return
        state = checkpoint.load_trainer_state(directory)
        self.global_steps = state["global_step"]
        self.tracker.rewind(self.global_steps)
        self.train_loader.load_state_dict(state["dataloader"])
        self.kl_ctrl.value = state["extra"]["kl_coef"]
        self.actor_rollout_wg.load_checkpoint(str(directory / "actor"))
        if self.use_critic:
            self.critic_wg.load_checkpoint(str(directory / "critic"))
        print(f"resumed from {directory} at global step {self.global_steps}", flush=True)

    def wake_servers(self) -> None:
        """Async mode, before a rollout and never while the actor updates: the servers load the actor's
        weights if they changed and resume."""
        if self.servers is not None:
            self.servers.wake()

    @property
    def n_workers(self) -> int:
        return self.config.trainer.nnodes * self.config.trainer.n_gpus_per_node

    def log(self, metrics: dict) -> None:
        self.history.append({"step": self.global_steps, **metrics})
        self.tracker.log(metrics, step=self.global_steps)
