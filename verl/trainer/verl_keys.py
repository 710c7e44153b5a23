"""veRL's PPO keys this trainer has no place for: why, and what to set instead.

Launch scripts and YAML written for veRL (v0.9's ppo_trainer.yaml, listed with its defaults in
tests/fixtures/verl_v0.9_ppo_trainer_keys.json) reach the config check. Every veRL key is either a
key of the schema (verl/trainer/config.py, where FIXED_KEYS lists those implemented at one setting)
or an entry of VERL_KEYS: refused naming the key, the reason and the key to use, or accepted at the
values where veRL does what this trainer does (and then left out, the schema having no place for
it). An entry may name a subtree: it covers every key under it unless a longer entry names the key.

`screen_overrides` applies the table to `key=value` overrides before Hydra composes them, so a veRL
key fails by name instead of with Hydra's "Could not override"; `yaml_key_problem` explains a key
that a YAML file set.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VerlKey:
    why: str  # what this trainer does instead, or the key that holds the setting here
    works: tuple = ()  # the values at which veRL behaves as this trainer does: accepted


def _refused(why: str) -> VerlKey:
    return VerlKey(why)


def _at(why: str, *works: Any) -> VerlKey:
    return VerlKey(why, works)


ACTOR, REF, ROLLOUT, MODEL = ("actor_rollout_ref.actor", "actor_rollout_ref.ref", "actor_rollout_ref.rollout",
                              "actor_rollout_ref.model")
MULTI_TURN = f"{ROLLOUT}.multi_turn"

_ENTROPY = "the entropy is computed from the whole logits in one piece"
_NO_COMPILE = "nothing is compiled with torch.compile"
_NO_SP = "sequence parallelism is not implemented"
_NO_SEED = f"the actor workers seed torch from {ROLLOUT}.seed (seed + rank); the data order follows data.seed"
_PROFILER = "profiling is not implemented: the timing_s/* metrics and scripts/bench time the stages"
_MULTIMODAL = "multimodal inputs are not supported: prompts are text"
_TOOLS = (f"not yet: the tools are veRL's search tool through {MULTI_TURN}.tool_config_path (hermes tool calls), "
          "or RAG-R1's <search> tags without it")
_MEGATRON_LORA = f"Megatron's LoRA node; LoRA here: {MODEL}.lora_rank, lora_alpha, target_modules"


def _fsdp_entries(node: str, forward_only: bool) -> dict[str, VerlKey]:
    """veRL's FSDP engine keys of one model (`node`: actor or ref fsdp_config, or critic.fsdp)."""
    return {
        f"{node}.wrap_policy.min_num_params": _at("every decoder block is one FSDP unit", 0),
        f"{node}.offload_policy": _at("fsdp_config.param_offload is FSDP2's CPU offload policy here: set that",
                                      False),
        f"{node}.reshard_after_forward": _at("blocks reshard after their forward (FSDP2's default)", True),
        f"{node}.forward_prefetch": _at("FSDP2 prefetches as it does by default", False),
        f"{node}.model_dtype": _at("the master weights are fp32; fsdp_config.dtype sets the compute dtype",
                                   "fp32", "float32"),
        f"{node}.use_orig_params": _at("an FSDP1 option; FSDP2 shards the original parameters", False),
        f"{node}.seed": _refused(_NO_SEED),
        f"{node}.full_determinism": _at("deterministic kernels are not forced", False),
        f"{node}.ulysses_sequence_parallel_size": _at(_NO_SP, 1),
        f"{node}.entropy_from_logits_with_chunking": _at(_ENTROPY, False),
        f"{node}.entropy_from_logits_chunk_size": _at(_ENTROPY, 2048),
        f"{node}.use_torch_compile": _at(_NO_COMPILE, False),
        f"{node}.entropy_checkpointing": _at(_ENTROPY, False),
        f"{node}.use_no_sync_for_gradient_accumulation": _at("gradients are reduced after every micro-batch",
                                                             False),
        f"{node}.pad_to_length": _at("micro-batches are padded to their longest row", False),
        f"{node}.pad_to_length_bucket": _at("micro-batches are padded to their longest row", 1024),
        f"{node}.forward_only": _at("veRL's engine marker: the reference only runs forwards, actor and critic "
                                    "train", forward_only),
        f"{node}.strategy": _at("training always runs FSDP2", "fsdp", "fsdp2"),
        f"{node}.qat": _refused("quantization-aware training is not implemented"),
        f"{node}.qat.enable": _at("quantization-aware training is not implemented", False),
        f"{node}.turbo_config": _refused("veRL's TorchTitan engine; training runs FSDP2 over all workers"),
    }


def _optim_entries(node: str, grad_clip: str) -> dict[str, VerlKey]:
    return {
        f"{node}.optimizer": _at("the optimizer is torch.optim.AdamW", "AdamW"),
        f"{node}.optimizer_impl": _at("the optimizer is torch.optim.AdamW", "torch.optim"),
        f"{node}.clip_grad": _refused(f"set {grad_clip} (the gradient-norm clip)"),
        f"{node}.num_cycles": _at("the cosine schedule is a half wave down to min_lr_ratio", 0.5),
        f"{node}.zero_indexed_step": _at("the schedule counts steps from 0", True),
        f"{node}.override_optimizer_config": _at("AdamW takes lr, betas and weight_decay only", None),
        f"{node}.warmup_style": _at(f"veRL's deprecated name; set {node}.lr_scheduler_type", None),
    }


def _model_entries(node: str) -> dict[str, VerlKey]:
    return {
        f"{node}.hf_config_path": _at("the HF config is read from the model path", None),
        f"{node}.use_shm": _at("models load from disk", False),
        f"{node}.custom_chat_template": _at("the tokenizer's own chat template applies", None),
        f"{node}.external_lib": _at("no extra module is imported", None),
        f"{node}.enable_activation_offload": _at("activations stay on the GPU; "
                                                 "enable_gradient_checkpointing saves their memory", False),
        f"{node}.exclude_modules": _at("LoRA adapts target_modules", None),
        f"{node}.lora_adapter_path": _at("not yet: LoRA starts from fresh adapters", None),
        f"{node}.use_liger": _at("Liger kernels are not used", False),
        f"{node}.use_fused_kernels": _at("fused kernels are not used", False),
        f"{node}.fused_kernel_options": _refused("fused kernels are not used"),
        f"{node}.tiled_mlp": _refused("tiled MLP is not implemented"),
        f"{node}.tiled_mlp.enabled": _at("tiled MLP is not implemented", False),
        f"{node}.mtp": _refused("multi-token prediction is not implemented"),
        f"{node}.mtp.enable": _at("multi-token prediction is not implemented", False),
        f"{node}.mtp.enable_train": _at("multi-token prediction is not implemented", False),
        f"{node}.mtp.enable_rollout": _at("multi-token prediction is not implemented", False),
        f"{node}.lora": _refused(_MEGATRON_LORA),
        f"{node}.lora.rank": _at(_MEGATRON_LORA, 0),
    }


def _profiler_entries(node: str) -> dict[str, VerlKey]:
    return {f"{node}.profiler": _refused(_PROFILER), f"{node}.profiler.enable": _at(_PROFILER, False)}


def _switched_off(node: str, switch: str, why: str) -> dict[str, VerlKey]:
    """A veRL feature this trainer lacks: its switch is accepted off, anything else under it refused."""
    return {node: _refused(why), f"{node}.{switch}": _at(why, False)}


VERL_KEYS: dict[str, VerlKey] = {
    # actor
    **_optim_entries(f"{ACTOR}.optim", f"{ACTOR}.grad_clip"),
    **_fsdp_entries(f"{ACTOR}.fsdp_config", forward_only=False),
    **_profiler_entries(ACTOR),
    f"{ACTOR}.rollout_n": _refused(f"veRL copies it from {ROLLOUT}.n; set that"),
    f"{ACTOR}.ppo_micro_batch_size": _at(f"veRL's deprecated global micro-batch size; set "
                                         f"{ACTOR}.ppo_micro_batch_size_per_gpu", None),
    f"{ACTOR}.tau_pos": _at("a parameter of policy-loss modes other than vanilla", 1.0),
    f"{ACTOR}.tau_neg": _at("a parameter of policy-loss modes other than vanilla", 1.05),
    f"{ACTOR}.freeze_vision_tower": _at(_MULTIMODAL, False),
    f"{ACTOR}.policy_loss": _refused("a parameter of policy-loss modes other than vanilla"),
    f"{ACTOR}.policy_loss.loss_mode": _at("the policy loss is PPO's clipped objective with dual clip "
                                          "(clip_ratio_c)", "vanilla"),
    f"{ACTOR}.policy_loss.clip_cov_ratio": _at("a parameter of the clip_cov loss mode", 0.0002),
    f"{ACTOR}.policy_loss.clip_cov_lb": _at("a parameter of the clip_cov loss mode", 1.0),
    f"{ACTOR}.policy_loss.clip_cov_ub": _at("a parameter of the clip_cov loss mode", 5.0),
    f"{ACTOR}.policy_loss.kl_cov_ratio": _at("a parameter of the kl_cov loss mode", 0.0002),
    f"{ACTOR}.policy_loss.ppo_kl_coef": _at("a parameter of the kl_cov loss mode", 0.1),
    f"{ACTOR}.policy_loss.dro_beta": _at("a parameter of the DRO loss mode", None),
    f"{ACTOR}.loss_scale_factor": _at("the loss is divided by the mini-batch's tokens or sequences "
                                      "(loss_agg_mode)", None),
    f"{ACTOR}.calculate_entropy": _at("the entropy is always computed and logged (actor/entropy)", True),
    f"{ACTOR}.calculate_sum_pi_squared": _at("not computed", False),
    f"{ACTOR}.use_prefix_grouper": _at("not implemented: each row runs its own forward", False),
    f"{ACTOR}.use_torch_compile": _at(_NO_COMPILE, False),
    f"{ACTOR}.data_loader_seed": _refused("mini-batches are shuffled (actor.shuffle) with the epoch as seed"),
    f"{ACTOR}.checkpoint": _refused("checkpoints always hold the model, the optimizer and the rest of "
                                    "the training state"),
    f"{ACTOR}.checkpoint.save_contents": _at("checkpoints always hold the model, the optimizer and the "
                                             "rest of the training state", ["model", "optimizer", "extra"]),
    f"{ACTOR}.checkpoint.load_contents": _at("a resumed run loads everything it saved",
                                             ["model", "optimizer", "extra"], "${.save_contents}"),
    f"{ACTOR}.checkpoint.async_save": _at("checkpoints are written synchronously", False),
    f"{ACTOR}.checkpoint.strict": _at("checkpoints load strictly (a LoRA one loads its adapter)", True),
    f"{ACTOR}.use_fused_kernels": _refused(f"fused kernels are not used ({MODEL}.use_fused_kernels)"),
    f"{ACTOR}.qat": _refused("quantization-aware training is not implemented"),
    f"{ACTOR}.qat.enable": _at("quantization-aware training is not implemented", False),
    f"{ACTOR}.ulysses_sequence_parallel_size": _at(_NO_SP, 1),
    f"{ACTOR}.entropy_from_logits_with_chunking": _at(_ENTROPY, False),
    f"{ACTOR}.entropy_from_logits_chunk_size": _at(_ENTROPY, 2048),
    f"{ACTOR}.entropy_checkpointing": _at(_ENTROPY, False),
    f"{ACTOR}.pad_to_length": _at("micro-batches are padded to their longest row", False),
    f"{ACTOR}.use_remove_padding": _refused(f"veRL copies it from {MODEL}.use_remove_padding; set that"),
    # reference policy
    **_fsdp_entries(f"{REF}.fsdp_config", forward_only=True),
    **_profiler_entries(REF),
    f"{REF}.rollout_n": _refused(f"veRL copies it from {ROLLOUT}.n; set that"),
    f"{REF}.strategy": _at("the reference runs FSDP2, as the actor", "fsdp", "fsdp2"),
    f"{REF}.use_torch_compile": _at(_NO_COMPILE, False),
    f"{REF}.log_prob_micro_batch_size": _at(f"veRL's deprecated global micro-batch size; set "
                                            f"{REF}.log_prob_micro_batch_size_per_gpu", None),
    f"{REF}.ulysses_sequence_parallel_size": _at(_NO_SP, 1),
    f"{REF}.entropy_from_logits_with_chunking": _at(_ENTROPY, False),
    f"{REF}.entropy_from_logits_chunk_size": _at(_ENTROPY, 2048),
    f"{REF}.entropy_checkpointing": _at(_ENTROPY, False),
    f"{REF}.pad_to_length": _at("micro-batches are padded to their longest row", False),
    # rollout
    **_profiler_entries(ROLLOUT),
    f"{ROLLOUT}.nnodes": _at("the rollout runs on the training workers (hybrid engine)", 0),
    f"{ROLLOUT}.n_gpus_per_node": _refused("the rollout runs on the training workers: trainer.n_gpus_per_node"),
    f"{ROLLOUT}.full_determinism": _at("deterministic kernels are not forced", False),
    f"{ROLLOUT}.ignore_eos": _at("generation stops at the end-of-sequence token", False),
    f"{ROLLOUT}.cudagraph_capture_sizes": _at("vLLM picks its CUDA-graph sizes (enforce_eager=false)", None),
    f"{ROLLOUT}.data_parallel_size": _refused("the vLLM engines' data parallelism is the world size over "
                                              "tensor_model_parallel_size"),
    f"{ROLLOUT}.expert_parallel_size": _at("expert parallelism is not implemented", 1),
    f"{ROLLOUT}.pipeline_model_parallel_size": _at("pipeline parallelism is not implemented", 1),
    f"{ROLLOUT}.enable_chunked_prefill": _at("vLLM's engine chunks long prefills itself", True),
    f"{ROLLOUT}.logprobs_mode": _at("the engines' log-probs are those of the distribution sampled from "
                                    "(logits / temperature)", "processed_logprobs"),
    f"{ROLLOUT}.scheduling_policy": _at("vLLM schedules first come, first served", "fcfs"),
    f"{ROLLOUT}.load_format": _at("the vLLM engine starts with dummy weights; the actor's are copied in",
                                  "dummy"),
    f"{ROLLOUT}.layered_summon": _at("the actor's weights are gathered whole before a rollout", False),
    f"{ROLLOUT}.log_prob_micro_batch_size": _at(f"veRL's deprecated global micro-batch size; set "
                                                f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu", None),
    f"{ROLLOUT}.disable_log_stats": _at("the vLLM engine does not log its statistics", True),
    f"{ROLLOUT}.over_sample_rate": _at("every sampled row is kept", 0),
    f"{ROLLOUT}.multi_stage_wake_up": _at("the vLLM engine wakes in one stage", False),
    f"{ROLLOUT}.engine_kwargs": _refused("not yet: engine arguments beyond the rollout's keys"),
    f"{ROLLOUT}.engine_kwargs.vllm": _at("not yet: engine arguments beyond the rollout's keys", {}),
    f"{ROLLOUT}.engine_kwargs.sglang": _at("SGLang is not supported (rollout.name: hf | vllm)", {}),
    f"{ROLLOUT}.engine_kwargs.trtllm": _at("TensorRT-LLM is not supported (rollout.name: hf | vllm)", {}),
    f"{ROLLOUT}.router_config_path": _at("async mode sends each trajectory to one actor worker's rollout server; "
                                         "no router is configured", None),
    f"{MULTI_TURN}.function_tool_path": _at(_TOOLS, None),
    f"{MULTI_TURN}.format": _at("tool calls are parsed as hermes writes them (<tool_call>{json}</tool_call>, "
                                "Qwen2.5's)", "hermes"),
    f"{MULTI_TURN}.max_user_turns": _at("the search agent has no user turns: observations go inside its one "
                                        "assistant turn", None),
    f"{MULTI_TURN}.max_parallel_calls": _refused("queries per <search>: agent.mode=multi and agent.max_queries"),
    f"{MULTI_TURN}.max_tool_response_length": _refused("tokens of one <information> block: "
                                                       "agent.max_obs_length"),
    f"{MULTI_TURN}.tool_response_truncate_side": _refused("an <information> block keeps its first "
                                                          "agent.max_obs_length tokens"),
    f"{MULTI_TURN}.use_inference_chat_template": _refused("the trajectory is the policy's tokens as generated "
                                                          "and the observations appended after them (the tool "
                                                          "format renders its tool messages with the chat "
                                                          "template); no template is applied again"),
    f"{MULTI_TURN}.tokenization_sanity_check_mode": _refused("the trajectory is built from token ids, never "
                                                             "re-tokenized"),
    f"{MULTI_TURN}.num_repeat_rollouts": _at(f"every prompt is sampled {ROLLOUT}.n times", None),
    f"{ROLLOUT}.calculate_log_probs": _at("the engines always return their log-probs (rollout_log_probs); "
                                          "the old log-probs are recomputed by the actor", True),
    f"{ROLLOUT}.agent": _refused(f"veRL's agent-loop workers (async rollouts); the loop here is {ROLLOUT}.loop"),
    f"{ROLLOUT}.checkpoint_engine": _refused("the actor's weights reach the engine through its sharding manager"),
    f"{ROLLOUT}.trace": _refused("rollout tracing is not implemented"),
    f"{ROLLOUT}.trace.backend": _at("rollout tracing is not implemented", None),
    f"{ROLLOUT}.skip_tokenizer_init": _at("the engine detokenizes: the agent's stop strings need it", False),
    f"{ROLLOUT}.enable_rollout_routing_replay": _at("MoE routing replay is not implemented", False),
    f"{ROLLOUT}.moe_load_balance_metrics_interval": _at("MoE routing metrics are not logged", 0),
    **_switched_off(f"{ROLLOUT}.prometheus", "enable", "the engine exports no Prometheus metrics"),
    f"{ROLLOUT}.quantization": _at("the engine runs the actor's unquantized weights", None),
    f"{ROLLOUT}.quantization_config_file": _at("the engine runs the actor's unquantized weights", None),
    f"{ROLLOUT}.mtp": _refused("speculative decoding is not implemented"),
    f"{ROLLOUT}.qat": _refused("quantization-aware training is not implemented"),
    **_switched_off(f"{ROLLOUT}.disaggregation", "enabled", "prefill and decode run in the same engine"),
    # models
    **_model_entries(MODEL),
    **_model_entries("critic.model"),
    "critic.model.lora_rank": _at("LoRA trains the actor only; the critic trains all its weights", 0),
    "critic.model.lora_alpha": _at("LoRA trains the actor only; the critic trains all its weights", 16),
    "critic.model.target_modules": _at("LoRA trains the actor only; the critic trains all its weights",
                                       "all-linear"),
    # data
    "data.tokenizer": _at(f"the tokenizer is {MODEL}.tokenizer_path (default: the model path)", None),
    "data.use_shm": _at("data loads from disk", False),
    "data.train_max_samples": _at("not yet: every row of data.train_files is used", -1),
    "data.val_max_samples": _at("not yet: every row of data.val_files is used", -1),
    "data.reward_fn_key": _at("the reward function dispatches on the data_source column", "data_source"),
    "data.gen_batch_size": _at("each generation batch has data.train_batch_size prompts (filter_groups "
                               "refills from the next ones)", None),
    "data.tool_config_path": _at(f"the search agent renders the prompts with the tools of "
                                 f"{MULTI_TURN}.tool_config_path itself", None),
    "data.function_tool_path": _at(_TOOLS, None),
    "data.return_raw_input_ids": _at("the batch carries the prompts' chat-templated token ids only", False),
    "data.return_full_prompt": _at("the batch carries the prompts' chat-templated token ids only", False),
    "data.dataloader_num_workers": _at("prompts are tokenized once when the data loads; batches are "
                                       "collated in the driver", 0),
    "data.image_patch_size": _refused(_MULTIMODAL),
    "data.image_key": _refused(_MULTIMODAL),
    "data.video_key": _refused(_MULTIMODAL),
    "data.audio_key": _refused(_MULTIMODAL),
    "data.return_multi_modal_inputs": _at(_MULTIMODAL, False),
    "data.mm_processor_kwargs": _at(_MULTIMODAL, {}),
    "data.validation_shuffle": _at("validation reads the rows in file order", False),
    "data.filter_overlong_prompts_workers": _at("overlong prompts are filtered in the driver", 1),
    "data.trust_remote_code": _refused(f"set {MODEL}.trust_remote_code (the tokenizer's too)"),
    "data.custom_cls": _refused("RLHFDataset reads veRL's parquet columns; no other dataset class is loaded"),
    "data.custom_cls.path": _at("RLHFDataset reads veRL's parquet columns", None),
    "data.custom_cls.name": _at("RLHFDataset reads veRL's parquet columns", None),
    "data.apply_chat_template_kwargs": _at("not yet: the chat template gets add_generation_prompt only", {}),
    # critic
    **_optim_entries("critic.optim", "critic.grad_clip"),
    **_fsdp_entries("critic.fsdp", forward_only=False),
    **_profiler_entries("critic"),
    "critic.fsdp.param_offload": _refused("set critic.model.fsdp_config.param_offload"),
    "critic.fsdp.optimizer_offload": _refused("set critic.model.fsdp_config.optimizer_offload"),
    "critic.fsdp.fsdp_size": _refused("set critic.model.fsdp_config.fsdp_size"),
    "critic.fsdp.dtype": _refused("set critic.model.fsdp_config.dtype"),
    "critic.enable": _at("the critic is built when algorithm.adv_estimator needs one (gae)", None),
    "critic.ppo_micro_batch_size": _at("veRL's deprecated global micro-batch size; set "
                                       "critic.ppo_micro_batch_size_per_gpu", None),
    "critic.forward_micro_batch_size": _at("veRL's deprecated global micro-batch size; set "
                                           "critic.forward_micro_batch_size_per_gpu", None),
    "critic.data_loader_seed": _refused("mini-batches are shuffled (critic.shuffle) with the epoch as seed"),
    "critic.loss_scale_factor": _at("the loss is divided by the mini-batch's tokens or sequences "
                                    "(loss_agg_mode)", None),
    "critic.checkpoint": _refused("checkpoints always hold the model, the optimizer and the rest of the "
                                  "training state"),
    "critic.checkpoint.save_contents": _at("checkpoints always hold the model, the optimizer and the rest of "
                                           "the training state", ["model", "optimizer", "extra"]),
    "critic.checkpoint.load_contents": _at("a resumed run loads everything it saved",
                                           ["model", "optimizer", "extra"], "${.save_contents}"),
    "critic.checkpoint.async_save": _at("checkpoints are written synchronously", False),
    "critic.ulysses_sequence_parallel_size": _at(_NO_SP, 1),
    # rewards
    "reward_model": _refused("reward models are not implemented: rewards come from custom_reward_function"),
    "reward_model.enable": _at("reward models are not implemented: rewards come from custom_reward_function",
                               None, False),
    "reward": _refused("reward models and managers are not implemented: rewards come from "
                       "custom_reward_function"),
    "reward.custom_reward_function.path": _refused("set custom_reward_function.path"),
    "reward.custom_reward_function.name": _refused("set custom_reward_function.name"),
    "reward.reward_model.enable": _at("reward models are not implemented", False),
    "reward.reward_manager.name": _at("the reward manager scores each row with custom_reward_function",
                                      "naive"),
    "reward.sandbox_fusion": _refused("code-execution sandboxes are not implemented"),
    "sandbox_fusion": _refused("code-execution sandboxes are not implemented"),
    # algorithm
    "algorithm.rollout_correction": _refused("rollout corrections are not implemented: the old log-probs are "
                                             "the actor's own (the sampler's with "
                                             "actor_rollout_ref.rollout.lag=1)"),
    "algorithm.rollout_correction.rollout_is": _at("importance weights for rollout-training mismatch are not "
                                                   "implemented", None),
    "algorithm.rollout_correction.rollout_rs": _at("rejection sampling for rollout-training mismatch is not "
                                                   "implemented", None),
    "algorithm.rollout_correction.bypass_mode": _at("the ratio is taken against the sampler's log-probs (bypass "
                                                    "mode with ppo_clip) exactly when training one step off: set "
                                                    "actor_rollout_ref.rollout.lag=1", False),
    "algorithm.filter_groups.max_inflight_gen_batches": _at("generation batches run one at a time", 1),
    "algorithm.use_pf_ppo": _at("PF-PPO's reweighting is not implemented", False),
    "algorithm.pf_ppo": _refused("PF-PPO's reweighting is not implemented"),
    # trainer
    "trainer.balance_batch": _at("rows are not reordered across workers by length", False),
    "trainer.log_val_generations": _at("validation generations are not logged as tables", 0),
    "trainer.rollout_data_dir": _at("rollouts are not dumped to files", None),
    "trainer.validation_data_dir": _at("validation generations are not dumped to files", None),
    "trainer.esi_redundant_time": _at("no checkpoint is triggered by instance expiry", 0),
    "trainer.resume_from_path": _at("set trainer.resume_mode=<path to a global_step_N directory>", None),
    "trainer.checkpoint_callback_class": _at("no checkpoint callback is loaded", None),
    "trainer.val_only": _at("not yet: a run trains (validate with python -m rag_r1.eval)", False),
    "trainer.default_hdfs_dir": _at("checkpoints go to trainer.default_local_dir only", None),
    "trainer.del_local_ckpt_after_load": _at("checkpoints stay on disk after a resume "
                                             "(trainer.max_actor_ckpt_to_keep prunes them)", False),
    "trainer.ray_wait_register_center_timeout": _refused("the worker group waits for its Ray resources "
                                                         "itself"),
    "trainer.use_v1": _refused("veRL's choice between its trainers; this one has one (RayPPOTrainer)"),
    "trainer.v1": _refused("veRL's v1 trainer modes; this trainer runs synchronous steps"),
    # other top-level nodes
    "global_profiler": _refused(_PROFILER),
    "global_profiler.tool": _at(_PROFILER, None),
    **_switched_off("distillation", "enabled", "distillation is not implemented"),
    **_switched_off("transfer_queue", "enable", "the transfer queue is not implemented: batches move as "
                                                "DataProto through Ray"),
    "skip": _refused("rollout dump and replay is not implemented"),
    **{f"skip.{part}.enable": _at("rollout dump and replay is not implemented", False)
       for part in ("rollout", "rollout_tq", "async_rollout")},
}

# Spellings of this trainer's keys kept for older launchers: a key under the alias is rewritten
# to the same key under its home.
ALIASES = {"ray_init": "ray_kwargs.ray_init"}


def verl_key(key: str) -> tuple[str, VerlKey] | None:
    """The entry covering the dotted `key` and its name: the key itself, else its nearest node with
    an entry; veRL's `_target_` (its dataclass pointer) anywhere. None: not a veRL key of the table."""
    if key.rsplit(".", 1)[-1] == "_target_":
        return key, _refused("veRL's pointer to its own config dataclass; this trainer's schema is "
                             "verl/trainer/config.py")
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in VERL_KEYS:
            return name, VERL_KEYS[name]
    return None


def _same(value: Any, works: Any) -> bool:
    if isinstance(value, bool) or isinstance(works, bool):  # True == 1 in Python; not here
        return isinstance(value, bool) and isinstance(works, bool) and value == works
    return value == works


def accepts(entry: VerlKey, value: Any) -> bool:
    return any(_same(value, works) for works in entry.works)


def refusal(key: str, entry: VerlKey, shown: str) -> str:
    """The problem of veRL's `key` set to what `shown` says: the key, the reason, the values accepted."""
    accepted = f"; accepted: {', '.join(map(repr, entry.works))}" if entry.works else ""
    return f"{key}{shown} is not supported here: {entry.why}{accepted}"


def yaml_key_problem(key: str) -> str | None:
    """The problem of veRL's `key` found in a YAML file (the schema has no place for it), or None."""
    found = verl_key(key)
    if found is None:
        return None
    _, entry = found
    leave_out = " (leave it out: this trainer behaves so without it)" if entry.works else ""
    return refusal(key, entry, " (set in a YAML file)") + leave_out


@dataclass
class Screened:
    overrides: list[str]  # what Hydra composes: aliases rewritten, accepted veRL keys left out
    problems: list[str]  # one per refused veRL key, naming it


def screen_overrides(overrides: list[str], in_schema: Callable[[str], bool]) -> Screened:
    """Apply VERL_KEYS and ALIASES to Hydra `key=value` overrides (`+key=`, `++key=`, `~key` too).

    A key of the schema (`in_schema`) passes as it is, table or not; a key neither in the schema nor
    in the table passes too, for Hydra to refuse as a misspelling."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    screened = Screened([], [])
    for override in overrides:
        sign = override[:len(override) - len(override.lstrip("+~"))]
        key, has_value, text = override[len(sign):].partition("=")
        override = sign + _home(key) + has_value + text
        found = None if in_schema(_home(key)) else verl_key(key)
        if found is None:
            screened.overrides.append(override)
            continue
        _, entry = found
        try:
            value = parser.parse_override(override).value()
        except OverrideParseException:  # a value Hydra cannot read is none the table accepts
            value = text
        if has_value and accepts(entry, value):
            continue
        screened.problems.append(refusal(key, entry, f"={text}" if has_value else " (deleted)"))
    return screened


def _home(key: str) -> str:
    for alias, home in ALIASES.items():
        if key == alias or key.startswith(alias + "."):
            return home + key[len(alias):]
    return key
