"""The worker processes of a PPO run: ActorRolloutRefWorker and CriticWorker.

Each class runs once per rank (one process per GPU, or per CPU worker slot) inside a Ray actor
started by RayWorkerGroup; the `@register`-ed methods are what the driver calls on the group.
Here lives the distributed plumbing (sharding, device moves, checkpoints); the algorithms live
in actor/dp_actor.py and critic/dp_critic.py, the generation engines in rollout/.

Roles of ActorRolloutRefWorker (veRL's names): "actor", "rollout", "ref", "actor_rollout",
"actor_rollout_ref". With a rollout role the engine generates with the actor's CURRENT weights:
the sharding manager copies them into the engine (HF's plain copy of the policy, or vLLM) once
after each change, and a vLLM engine sleeps while the training passes run.

With `rollout.mode=async` the worker hosts a rollout server (verl/workers/rollout/server.py)
instead of the batch rollout: the driver sends it one request per trajectory turn with
`server_generate`, many at once when the worker group is threaded
(`RayWorkerGroup(..., max_concurrency=n)`). The server gets the actor's weights once after each
change and frees its memory when the training passes start, as the batch engines do; with
`rollout.lag=1` it instead goes on generating with the weights it holds while the actor trains, and
loads the new ones when the driver next calls `wake_server`, which returns their version.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl.protocol import DataProto
from verl.single_controller.base import Dispatch, Worker, register
from verl.single_controller.base.worker import peak_rss_bytes
from verl.utils import fsdp_utils, precision
from verl.utils.attention import use_for_generation
from verl.utils.distributed import all_reduce_max, device, empty_device_cache, return_freed_heap
from verl.utils.lora import (adapter_state_dict, adapters_disabled, apply_lora, lora_enabled, lora_scaling,
                             merged_state_dict, save_peft_adapter)
from verl.utils.model import hf_config, load_causal_lm, load_value_model
from verl.workers.actor.dp_actor import DataParallelPPOActor
from verl.workers.critic.dp_critic import DataParallelPPOCritic
from verl.workers.rollout.server import GenerationOutput, SamplingSettings, ServerHost
from verl.workers.sharding_manager import FSDPVLLMShardingManager, FullWeightsShardingManager, plain_state_dict

ROLES = ("actor", "rollout", "ref", "actor_rollout", "actor_rollout_ref")


def _rows_per_rank(prompts_per_step: int, samples_per_prompt: int, world_size: int, name: str) -> int:
    rows = prompts_per_step * samples_per_prompt
    if rows % world_size:
        raise ValueError(f"{name} ({prompts_per_step}) x rollout.n ({samples_per_prompt}) = {rows} rows "
                         f"must divide over {world_size} workers")
    return rows // world_size


def _log_prob_batching(node) -> tuple[int, int | None]:
    """(rows per micro-batch, token budget or None) of a log-prob pass, from its config node."""
    budget = node.log_prob_max_token_len_per_gpu if node.log_prob_use_dynamic_bsz else None
    return node.log_prob_micro_batch_size_per_gpu, budget


def _make_optimizer(module: torch.nn.Module, optim_cfg) -> torch.optim.Optimizer:
    # frozen weights (the base model under LoRA) get no optimizer state
    return torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad], lr=optim_cfg.lr, betas=tuple(optim_cfg.betas),
        weight_decay=optim_cfg.weight_decay,
    )


class _TrainStateMixin:
    """Checkpoints as FULL state dicts written by rank 0 (portable to any world size or to a
    single process); every rank takes part because gathering shards is collective. Each rank also
    writes its own RNG state, into the same directory on its own machine's disk."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    rank: int
    trains_adapter_only = False  # LoRA: checkpoints hold the adapter; the base comes from model.path
    offloads_optimizer = False  # Adam's states wait in CPU memory between updates (fsdp_utils.moves_optimizer_state)

    @contextmanager
    def _optimizer_state_on_device(self):
        """Adam's states beside their parameters inside (an update, a checkpoint), back in CPU
        memory afterwards when the optimizer is offloaded."""
        if self.offloads_optimizer:
            fsdp_utils.move_optimizer_state(self.optimizer, device())
        try:
            yield
        finally:
            if self.offloads_optimizer:
                fsdp_utils.move_optimizer_state(self.optimizer, "cpu")

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, directory: str) -> None:
        path = Path(directory)
        # every rank, not rank 0 alone: on machines without a shared file system a rank's RNG file
        # goes to a directory that only its own machine's mkdir creates
        path.mkdir(parents=True, exist_ok=True)
        with self._optimizer_state_on_device():
            model_sd = fsdp_utils.full_model_state_dict(self.module)
            optim_sd = fsdp_utils.full_optimizer_state_dict(self.module, self.optimizer)
        empty_device_cache()  # the gathers' buffers
        if self.rank == 0:
            if self.trains_adapter_only:
                model_sd = adapter_state_dict(model_sd)
                save_peft_adapter(model_sd, self.config.model, path / "lora_adapter")
            torch.save(model_sd, path / "model.pt")
            torch.save(optim_sd, path / "optimizer.pt")
            torch.save(self.lr_scheduler.state_dict(), path / "lr_scheduler.pt")
        dist.barrier()
        # Each rank samples its own rollouts: its RNG must resume too, or a resumed sampled step differs.
        torch.save(_rng_state(), path / f"rng_rank{self.rank}.pt")

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, directory: str) -> None:
        path = Path(directory)
        if self.rank == 0:
            model_sd = torch.load(path / "model.pt", weights_only=True)
            optim_sd = torch.load(path / "optimizer.pt", weights_only=False)
            sched = [torch.load(path / "lr_scheduler.pt", weights_only=False)]
        else:  # filled by broadcast from rank 0, so other nodes need not see rank 0's disk
            model_sd, optim_sd, sched = {}, {}, [None]
        with self._optimizer_state_on_device():
            fsdp_utils.load_full_state_dicts(self.module, self.optimizer, model_sd, optim_sd,
                                             strict=not self.trains_adapter_only)
        del model_sd, optim_sd
        empty_device_cache()  # the broadcasts' buffers
        dist.broadcast_object_list(sched, src=0)
        self.lr_scheduler.load_state_dict(sched[0])
        rng = path / f"rng_rank{self.rank}.pt"
        if rng.exists():  # absent when resuming on more ranks than saved: those start fresh
            _set_rng_state(torch.load(rng, weights_only=False))
        self._weights_changed()

    def _weights_changed(self) -> None:
        """Hook for what depends on the weights (the actor's rollout copy)."""


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device().type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device().type == "cuda":
        torch.cuda.set_rng_state(state["cuda"])


class ActorRolloutRefWorker(_TrainStateMixin, Worker):
    def __init__(self, config: DictConfig, role: str):
        """`config`: the `actor_rollout_ref` subtree."""
        super().__init__(process_group_timeout_s=config.nccl_timeout)
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; known: {ROLES}")
        self.config, self.role = config, role
        self._is_actor = role in ("actor", "actor_rollout", "actor_rollout_ref")
        self._is_rollout = role in ("rollout", "actor_rollout", "actor_rollout_ref")
        self._is_ref = role in ("ref", "actor_rollout_ref")
        self._hosts_server = self._is_rollout and config.rollout.mode == "async"
        # rollout.lag=1: the server goes on serving the next step's rollout, with the weights it holds,
        # while the actor trains; it loads the new ones when the driver next wakes it
        self._serves_while_training = self._hosts_server and config.rollout.lag == 1
        self.weights_version = 0  # changes of the actor's weights in this worker: updates, a checkpoint load
        self.server_weights_version: int | None = None  # the version the server holds
        self.use_gpu = device().type == "cuda"
        self.trains_adapter_only = lora_enabled(config.model)
        if self._is_actor:
            self.mini_batch_rows = _rows_per_rank(config.actor.ppo_mini_batch_size, config.rollout.n,
                                                  self.world_size, "actor.ppo_mini_batch_size")

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self) -> None:
        # adapters' initial weights and every sample hf draws follow the run's seed; ranks draw apart
        torch.manual_seed(self.config.rollout.seed + self.rank)
        model_cfg = self.config.model
        self.tokenizer = AutoTokenizer.from_pretrained(
            model_cfg.tokenizer_path or model_cfg.path, trust_remote_code=model_cfg.trust_remote_code)
        if self._is_actor or self._is_rollout:
            model = load_causal_lm(model_cfg)
            if self.trains_adapter_only:
                model = apply_lora(model, model_cfg)
            self.module = fsdp_utils.apply_fsdp2(model, self.config.actor.fsdp_config, self.use_gpu)
        if self._is_actor:
            self.optimizer = _make_optimizer(self.module, self.config.actor.optim)
            self.offloads_optimizer = fsdp_utils.moves_optimizer_state(self.config.actor.fsdp_config, self.use_gpu)
            self.lr_scheduler = fsdp_utils.build_lr_scheduler(self.optimizer, self.config.actor.optim)
            self.actor = DataParallelPPOActor(self.config.actor, self.module, self.optimizer, self.mini_batch_rows,
                                              use_remove_padding=model_cfg.use_remove_padding)
        if self._hosts_server:
            self.server_host = self._build_server_host()
        elif self._is_rollout:
            self.rollout, self.sharding_manager = self._build_rollout()
        # the reference scores the same tokens as the actor (state masking decides which)
        ref_kwargs = {"state_masking": self.config.actor.state_masking,
                      "use_remove_padding": model_cfg.use_remove_padding}
        if self._is_ref and self._is_actor and self.trains_adapter_only:  # the actor with adapters off
            self.ref = DataParallelPPOActor(self.config.ref, self.module, **ref_kwargs)
        elif self._is_ref:
            ref_module = fsdp_utils.apply_fsdp2(load_causal_lm(model_cfg), self.config.ref.fsdp_config, self.use_gpu)
            self.ref = DataParallelPPOActor(self.config.ref, ref_module, **ref_kwargs)

    def _build_rollout(self):
        name = self.config.rollout.name
        if name == "hf":
            from verl.workers.rollout.hf_rollout import HFRollout

            engine_module = self._hf_engine_module()
            scaling = lora_scaling(self.config.model) if self.trains_adapter_only else None
            return (HFRollout(engine_module, self.tokenizer, self.config.rollout),
                    FullWeightsShardingManager(self.module, engine_module, scaling))
        if name == "vllm":
            if self.trains_adapter_only:
                raise ValueError("actor_rollout_ref.model.lora_rank > 0 is supported with rollout.name=hf only")
            from verl.workers.rollout.vllm_rollout import VLLMRollout

            rollout = VLLMRollout(self.config.model.path, self.config.rollout, self.tokenizer)
            tp_size = self.config.rollout.tensor_model_parallel_size
            return rollout, FSDPVLLMShardingManager(self.module, rollout, tp_size)
        raise ValueError(f"rollout.name must be hf or vllm, got {name!r}")

    def _hf_engine_module(self) -> torch.nn.Module:
        """The HF engines' plain copy of the policy, stored in the dtype it computes in (rollout.dtype;
        fp32 under auto when a LoRA adapter is merged into it), generating with sdpa_gqa where the
        policy uses sdpa (verl/utils/attention.py)."""
        dtype = precision.engine_dtype(self.config.rollout.dtype, self.use_gpu, merges_adapter=self.trains_adapter_only)
        return use_for_generation(load_causal_lm(self.config.model, dtype=dtype).to(device()).eval())

    def _build_server_host(self) -> ServerHost:
        """rollout.mode=async: this rank's rollout server, released (training runs first). A lone rank
        loads the weights at its first request after a change; with several, gathering them is
        collective, so the driver calls `wake_server` on all ranks before their requests."""
        rollout = self.config.rollout
        if rollout.name == "hf":
            from verl.workers.rollout.hf_server import HFServer

            server = HFServer(self._hf_engine_module(), self.tokenizer, rollout.max_num_seqs)
        elif rollout.name == "vllm":
            if self.trains_adapter_only:
                raise ValueError("actor_rollout_ref.model.lora_rank > 0 is supported with rollout.name=hf only")
            from verl.workers.rollout.vllm_server import VLLMServer

            server = VLLMServer(self.config.model.path, rollout, seed=rollout.seed + self.rank)
        else:
            raise ValueError(f"rollout.name must be hf or vllm, got {rollout.name!r}")
        host = ServerHost(server, self._server_weights, load_on_generate=self.world_size == 1)
        host.release()
        return host

    def _server_weights(self):
        """What the server loads: the actor's full weights, LoRA adapters merged."""
        self.server_weights_version = self.weights_version
        scaling = lora_scaling(self.config.model) if self.trains_adapter_only else None
        return plain_state_dict(self.module, scaling).items()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def wake_server(self) -> int:
        """All ranks together, before a rollout's requests and never while the actor trains: the server
        loads the actor's weights if they changed (or it freed them) and resumes. Returns the version
        of the weights it now holds (`weights_version` when they loaded)."""
        if self.server_weights_version != self.weights_version:
            self.server_host.weights_changed()  # with rollout.lag=1 the update left the server alone
        self.server_host.ready()
        return self.server_weights_version

    def server_generate(self, request_id: str, prompt_ids: list[int], params: SamplingSettings) -> GenerationOutput:
        """One turn of trajectory `request_id` on this rank's server; blocks until it is generated.
        Called on one worker's actor handle (`worker_group.workers[rank].server_generate.remote(...)`,
        a Ray ObjectRef that asyncio can await); send all turns of a trajectory to the same rank."""
        return self.server_host.generate(request_id, prompt_ids, params)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def server_metrics(self) -> dict[str, float]:
        """The server's counters (`server/...`), one dict per rank."""
        return self.server_host.server.metrics()

    def _with_temperature(self, data: DataProto) -> DataProto:
        # log-probs must be of the distribution that was sampled from: logits / temperature
        data.meta_info.setdefault("temperature", self.config.rollout.temperature)
        return data.to(device())

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def generate_sequences(self, prompts: DataProto) -> DataProto:
        with self.sharding_manager as manager:
            output = self.rollout.generate_sequences(manager.preprocess(prompts))
            return manager.postprocess(output).to("cpu")

    def _rollout_finished(self) -> None:
        """Training passes start: the rollout's cached keys/values are stale (or about to be), and a
        vLLM engine frees its GPU memory for training. A server serving while the actor trains
        (rollout.lag=1) is left alone: the next step's rollout is running on it."""
        if self._hosts_server:
            if not self._serves_while_training:
                self.server_host.release()
        elif self._is_rollout:
            self.rollout.clear_cache()
            self.sharding_manager.rollout_finished()

    def _weights_changed(self) -> None:
        self.weights_version += 1
        self._rollout_finished()
        if self._hosts_server:
            if not self._serves_while_training:  # that one keeps its weights until wake_server
                self.server_host.weights_changed()
        elif self._is_rollout:
            self.sharding_manager.weights_changed()

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def compute_log_prob(self, data: DataProto) -> DataProto:
        self._rollout_finished()
        data = self._with_temperature(data)
        log_probs, entropys = self.actor.compute_log_prob(data, *_log_prob_batching(self.config.rollout),
                                                          with_entropy=True)
        return DataProto.from_dict({"old_log_probs": log_probs, "entropys": entropys},
                                   meta_info={"temperature": data.meta_info["temperature"]}).to("cpu")

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def compute_ref_log_prob(self, data: DataProto) -> DataProto:
        if not self._is_ref:
            raise RuntimeError(f"compute_ref_log_prob on a worker of role {self.role!r} (needs ref)")
        self._rollout_finished()
        data = self._with_temperature(data)
        if self.trains_adapter_only and self._is_actor:
            with adapters_disabled(self.module):
                log_probs, _ = self.ref.compute_log_prob(data, *_log_prob_batching(self.config.ref), with_entropy=False)
        else:
            log_probs, _ = self.ref.compute_log_prob(data, *_log_prob_batching(self.config.ref), with_entropy=False)
        return DataProto.from_dict({"ref_log_prob": log_probs}).to("cpu")

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def update_actor(self, data: DataProto) -> DataProto:
        self._rollout_finished()
        with self._optimizer_state_on_device():
            metrics = self.actor.update_policy(self._with_temperature(data))
        empty_device_cache()  # activations and gradients are gone; the next phase may generate
        if self._hosts_server:  # a threaded actor: the next update may run on another thread's heap
            return_freed_heap()
        self._weights_changed()
        metrics["actor/lr"] = self.lr_scheduler.get_last_lr()[0]
        metrics.update(all_reduce_max({"perf/actor_peak_rss_gb": peak_rss_bytes() / 2**30}))
        self.lr_scheduler.step()
        return DataProto(meta_info={"metrics": metrics})

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_hf_model(self, directory: str) -> None:
        """A plain HF checkpoint (config, safetensors, tokenizer) loadable with from_pretrained."""
        state = fsdp_utils.full_model_state_dict(self.module)
        if self.rank == 0:
            if self.trains_adapter_only:  # evaluation loads the merged model like any other
                state = merged_state_dict(state, lora_scaling(self.config.model))
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(hf_config(self.config.model))
            model.load_state_dict(state, assign=True)
            model.tie_weights()
            os.makedirs(directory, exist_ok=True)
            model.save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)
        dist.barrier()

    @register(dispatch_mode=Dispatch.RANK_ZERO)
    def full_state_dict(self) -> dict:
        """The actor's unsharded weights (for tests and export)."""
        return fsdp_utils.full_model_state_dict(self.module)


class CriticWorker(_TrainStateMixin, Worker):
    def __init__(self, config: DictConfig):
        """`config`: the `critic` subtree; `critic.rollout_n` (veRL's key) scales the mini-batch."""
        super().__init__(process_group_timeout_s=config.nccl_timeout)
        self.config = config
        self.use_gpu = device().type == "cuda"
        self.mini_batch_rows = _rows_per_rank(config.ppo_mini_batch_size, config.rollout_n,
                                              self.world_size, "critic.ppo_mini_batch_size")

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self) -> None:
        if not self.config.model.path:
            raise ValueError("critic.model.path is unset (veRL defaults it to actor_rollout_ref.model.path)")
        model = load_value_model(self.config.model)
        self.module = fsdp_utils.apply_fsdp2(model, self.config.model.fsdp_config, self.use_gpu)
        self.optimizer = _make_optimizer(self.module, self.config.optim)
        self.offloads_optimizer = fsdp_utils.moves_optimizer_state(self.config.model.fsdp_config, self.use_gpu)
        self.lr_scheduler = fsdp_utils.build_lr_scheduler(self.optimizer, self.config.optim)
        self.critic = DataParallelPPOCritic(self.config, self.module, self.optimizer, self.mini_batch_rows)

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def compute_values(self, data: DataProto) -> DataProto:
        values = self.critic.compute_values(data.to(device()))
        return DataProto.from_dict({"values": values}).to("cpu")

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def update_critic(self, data: DataProto) -> DataProto:
        with self._optimizer_state_on_device():
            metrics = self.critic.update_critic(data.to(device()))
        empty_device_cache()
        metrics["critic/lr"] = self.lr_scheduler.get_last_lr()[0]
        metrics.update(all_reduce_max({"perf/critic_peak_rss_gb": peak_rss_bytes() / 2**30}))
        self.lr_scheduler.step()
        return DataProto(meta_info={"metrics": metrics})

