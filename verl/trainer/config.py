"""The PPO trainer's configuration: every key, its type, its one default and what it means.

`configs/ppo_trainer.yaml` and the command line only override these values. `compose_config`
builds the config the way `python -m verl.trainer.main_ppo key=value ...` does; a misspelled key
fails there ("Key 'trian_files' is not in struct"), and `check_config` names every mandatory key
left unset (`???`), every inconsistent batch size and every veRL key set to a value this trainer does
not implement ("... is not supported ...", FIXED_KEYS) before a worker starts. veRL's keys that have
no place here are refused by name, with the reason and the key to use, before Hydra composes
(verl/trainer/verl_keys.py). Code reads the typed attributes (`config.actor.ppo_epochs`), never
`.get(key, default)`: the default lives here only.

The `agent` and `retriever` nodes are free-form here: the rollout loop that reads them
(`actor_rollout_ref.rollout.loop`) validates them with its own schema.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from verl.trainer import verl_keys
from verl.trainer.ppo import core_algos
from verl.utils import precision
from verl.utils.hydra_config import CONFIG_DIR, compose_checked
from verl.utils.tracking import BACKENDS as LOGGER_BACKENDS

CONFIG_NAME = "ppo_trainer"
SCHEMA_NAME = "ppo_trainer_schema"

# `${sum:a,b}`: a default that adds two others (rollout.max_model_len)
if not OmegaConf.has_resolver("sum"):
    OmegaConf.register_new_resolver("sum", lambda *values: sum(values))


@dataclass
class DataConfig:
    train_files: Any = MISSING  # parquet path or list of paths
    val_files: Any = MISSING  # parquet path or list of paths
    prompt_key: str = "prompt"  # column holding the chat messages
    max_prompt_length: int = 512  # tokens; longer prompts are filtered or truncated
    max_start_length: int = 256  # agent loops: cap of the initial prompt inside the rolling prompt
    max_response_length: int = 512  # tokens generated per turn
    train_batch_size: int = 64  # prompts per step (before rollout.n samples)
    val_batch_size: Optional[int] = None  # prompts per validation batch; None = whole set at once
    shuffle: bool = True  # reshuffle the training set every epoch
    seed: int = 1  # seed of the training-set order
    filter_overlong_prompts: bool = True  # drop rows whose prompt exceeds max_prompt_length
    truncation: str = "error"  # overlong prompts when not filtered: error | left | right
    # Each row also carries its chat messages as the non-tensor column `raw_prompt` (veRL's name),
    # for a rollout loop that renders them itself; the loops here read the token ids.
    return_raw_chat: bool = False


@dataclass
class ModelConfig:
    path: str = MISSING  # HF model directory
    tokenizer_path: Optional[str] = None  # defaults to `path`
    trust_remote_code: bool = False
    enable_gradient_checkpointing: bool = False
    # veRL's packed sequences: each micro-batch of actor and reference runs as one row of its real
    # tokens, without padding or attention mask (verl/utils/packing.py); the same log-probs
    use_remove_padding: bool = False
    override_config: dict[str, Any] = field(default_factory=dict)  # passed to the HF config
    lora_rank: int = 0  # actor only: LoRA adapters of this rank train instead of all weights; 0 = off
    lora_alpha: float = 16  # LoRA scaling is lora_alpha / lora_rank
    target_modules: Any = "all-linear"  # modules that get adapters: "all-linear" or a list of names


@dataclass
class OptimConfig:
    lr: float = 1e-6
    lr_warmup_steps: int = -1  # > 0 wins over the ratio
    lr_warmup_steps_ratio: float = 0.0  # of total_training_steps
    lr_scheduler_type: str = "constant"  # constant | cosine (after warm-up); veRL's warmup_style before 0.9
    min_lr_ratio: float = 0.0  # cosine floor, fraction of lr
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    total_training_steps: int = -1  # filled in by the trainer (trainer.total_training_steps): not to be set


@dataclass
class FSDPConfig:
    param_offload: bool = False
    optimizer_offload: bool = False
    fsdp_size: int = -1  # ranks a model is sharded over: all of them (-1, or the world size) is what is supported
    # The dtype forwards and backwards compute in: auto | bfloat16 | float32 (veRL's default is bfloat16).
    # auto is bf16 on a GPU and on a CPU with bf16 instructions (AVX512-BF16 or AMX), fp32 on other
    # CPUs, where bf16 is emulated and slower. Master weights stay fp32 (veRL's model_dtype), gradients
    # are reduced in fp32, and log-probs and losses are computed in fp32 from the logits.
    dtype: str = "auto"


@dataclass
class ActorConfig:
    strategy: str = "fsdp"  # fsdp | fsdp2: both train with FSDP2 (fully_shard) here
    ppo_mini_batch_size: int = 16  # prompts per optimizer step (multiplied by rollout.n)
    ppo_micro_batch_size_per_gpu: int = 4  # rows per forward/backward (gradient accumulation)
    # Micro-batches by a token budget instead of ppo_micro_batch_size_per_gpu rows: each holds as many
    # rows as fit ppo_max_token_len_per_gpu padded tokens (a longer row goes alone).
    use_dynamic_bsz: bool = False
    ppo_max_token_len_per_gpu: int = 16384
    ppo_epochs: int = 1  # passes over each rollout batch
    shuffle: bool = False  # shuffle rows between mini-batches
    clip_ratio: float = 0.2  # PPO epsilon
    clip_ratio_low: Optional[float] = None  # defaults to clip_ratio
    clip_ratio_high: Optional[float] = None  # defaults to clip_ratio
    clip_ratio_c: float = 3.0  # dual-clip bound for negative advantages
    loss_agg_mode: str = "token-mean"  # token-mean | seq-mean-token-sum | seq-mean-token-mean
    entropy_coeff: float = 0.0  # entropy bonus in the policy loss
    use_kl_loss: bool = False  # KL to the reference policy as a loss term (GRPO style)
    kl_loss_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"  # an estimator of core_algos.KL_ESTIMATORS: kl | abs | mse | low_var_kl
    grad_clip: float = 1.0  # max gradient norm
    # No policy loss, and no log-prob, on tokens the policy did not write (info_mask 1: retrieved
    # blocks); critic.state_masking is the same for the value loss and GAE.
    state_masking: bool = True
    optim: OptimConfig = field(default_factory=OptimConfig)
    fsdp_config: FSDPConfig = field(default_factory=FSDPConfig)


@dataclass
class ValKwargs:
    do_sample: bool = False  # greedy validation by default
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    n: int = 1


@dataclass
class MultiTurnConfig:
    """veRL's multi-turn switch and turn cap. Whether a rollout has several turns is the rollout loop's
    business (rollout.loop): these two are checked against it, and a multi-turn loop reads the cap."""

    enable: Optional[bool] = None  # None: as the loop; true needs a multi-turn loop, false SingleTurnLoop
    # Generations per trajectory, the last one's tool calls not run; None: the loop's own cap (the
    # search agent's is agent.max_turns + 1, and it refuses a disagreeing pair).
    max_assistant_turns: Optional[int] = None
    # veRL's tool-config YAML (`tools: [{class_name, config, tool_schema}]`): the policy calls the
    # tools through its chat template. None: the loop's own format (the search agent: RAG-R1's
    # <search> tags). Read by the multi-turn loop (the search agent takes veRL's search tool).
    tool_config_path: Optional[str] = None


@dataclass
class RolloutConfig:
    name: str = "hf"  # hf | vllm
    # sync: the loop calls the workers' batch generate_sequences (every turn waits for the batch's
    # slowest row); async: each worker hosts a rollout server and the loop sends it one request per
    # trajectory turn (verl/trainer/ppo/rollout_servers.py), trajectories advancing on their own
    mode: str = "sync"
    # Policy lag of the trained batches: 0 | 1 (1 is veRL's one-step-off recipe). 0: a step samples with
    # the weights of the last update, then trains. 1 (mode=async): the next step's rollout runs on the
    # servers, with the weights they hold, while this step trains; they get the updated weights only
    # after the update, so every batch is trained one update after the policy that sampled it (the
    # first step overlaps nothing). The loss is then taken against the sampler: old_log_probs are the
    # rollout_log_probs (not recomputed), the ratio starts at pi_now / pi_sampler instead of 1, and the
    # first mini-batch already clips the tokens whose probability the last update moved beyond
    # clip_ratio. The servers stay awake while the actor trains (vllm: gpu_memory_utilization must
    # leave the training room).
    lag: int = 0
    loop: str = "verl.trainer.ppo.rollout_loop:SingleTurnLoop"  # module:Class of the RolloutLoop
    n: int = 1  # samples per prompt (GRPO needs > 1)
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    # Each actor worker seeds torch with seed + rank before it builds its model and adapters (a LoRA
    # adapter's initial weights) and samples; a vLLM engine's seed is seed + the index of its
    # tensor-parallel group. Runs that differ only in it tell a result from one run's luck. (veRL's
    # default is 42; 0 keeps each engine's seed its group's index.)
    seed: int = 0
    # The engine's compute dtype (hf and vllm), by default the actor's fsdp_config.dtype: auto | bfloat16
    # | float16 | float32. The hf engine stores its copy of the policy in it. Its log-probs are fp32
    # from its logits, which in bf16 differ from the trainer's by more than in fp32
    # (rollout/logprob_diff_* shows by how much). With LoRA, auto keeps the hf engine in float32: it merges
    # the adapter into its weights, and in bf16 the merge rounds a small update away (two thirds of an
    # update of 1e-4 on weights of 0.03), so the sampler would drift from the policy being trained.
    dtype: str = "${actor_rollout_ref.actor.fsdp_config.dtype}"  # type: ignore[assignment]
    gpu_memory_utilization: float = 0.5  # vllm
    tensor_model_parallel_size: int = 1  # vllm
    enforce_eager: bool = False  # vllm: False captures CUDA graphs (faster decoding, as veRL)
    free_cache_engine: bool = True  # vllm: the engine sleeps (frees its memory) while training runs; always on
    max_num_batched_tokens: int = 8192  # vllm
    # sequences one engine decodes at once: vllm's max_num_seqs; hf only in async mode (the server's batch rows)
    max_num_seqs: int = 1024
    # Reuse the keys/values of earlier turns: hf continues each row from the previous call's cache
    # (only an agent's new tokens are encoded); vllm turns on its automatic prefix caching.
    enable_prefix_caching: bool = True
    prompt_length: int = "${data.max_prompt_length}"  # type: ignore[assignment]  # follows data.*
    response_length: int = "${data.max_response_length}"  # type: ignore[assignment]  # follows data.*
    # vllm: the engine's context length. A turn's input is at most prompt_length tokens (an agent's
    # rolling prompt is cut to it) and it writes at most response_length more.
    max_model_len: int = "${sum:${.prompt_length},${.response_length}}"  # type: ignore[assignment]
    micro_batch_size: Optional[int] = None  # hf: rows generated at once per worker; None = all
    log_prob_micro_batch_size_per_gpu: int = 8  # rows per forward when recomputing log-probs
    log_prob_use_dynamic_bsz: bool = "${actor_rollout_ref.actor.use_dynamic_bsz}"  # type: ignore[assignment]
    log_prob_max_token_len_per_gpu: int = "${actor_rollout_ref.actor.ppo_max_token_len_per_gpu}"  # type: ignore[assignment]
    val_kwargs: ValKwargs = field(default_factory=ValKwargs)
    multi_turn: MultiTurnConfig = field(default_factory=MultiTurnConfig)


@dataclass
class RefConfig:
    log_prob_micro_batch_size_per_gpu: int = 8
    log_prob_use_dynamic_bsz: bool = "${actor_rollout_ref.actor.use_dynamic_bsz}"  # type: ignore[assignment]
    log_prob_max_token_len_per_gpu: int = "${actor_rollout_ref.actor.ppo_max_token_len_per_gpu}"  # type: ignore[assignment]
    fsdp_config: FSDPConfig = field(default_factory=lambda: FSDPConfig(param_offload=True))


@dataclass
class ActorRolloutRefConfig:
    hybrid_engine: bool = True  # actor and rollout share the weights; always on
    # Seconds a rank may wait in one collective (veRL's key; its default is 600). Saving a checkpoint,
    # rank 0 gathers the full fp32 model and Adam's states and writes them while the others wait in
    # a barrier: minutes for a 7B model on a slow disk, hence a generous default.
    nccl_timeout: int = 3600
    model: ModelConfig = field(default_factory=ModelConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ref: RefConfig = field(default_factory=RefConfig)


@dataclass
class CriticModelConfig:
    path: str = "${actor_rollout_ref.model.path}"  # the value model starts from the policy
    tokenizer_path: Optional[str] = None  # not supported: the critic reads the actor's token ids
    trust_remote_code: bool = False
    enable_gradient_checkpointing: bool = False
    use_remove_padding: bool = False  # packed micro-batches, as actor_rollout_ref.model.use_remove_padding
    override_config: dict[str, Any] = field(default_factory=dict)
    fsdp_config: FSDPConfig = field(default_factory=FSDPConfig)


@dataclass
class CriticConfig:
    strategy: str = "fsdp"  # fsdp | fsdp2, as the actor's
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5))
    model: CriticModelConfig = field(default_factory=CriticModelConfig)
    ppo_mini_batch_size: int = 16  # prompts per optimizer step (multiplied by rollout.n)
    ppo_micro_batch_size_per_gpu: int = 4
    forward_micro_batch_size_per_gpu: int = 8  # rows per forward in compute_values
    use_dynamic_bsz: bool = False  # token-budget micro-batches, as the actor's
    ppo_max_token_len_per_gpu: int = 32768
    forward_max_token_len_per_gpu: int = "${critic.ppo_max_token_len_per_gpu}"  # type: ignore[assignment]
    ppo_epochs: int = 1
    shuffle: bool = False
    rollout_n: int = "${actor_rollout_ref.rollout.n}"  # type: ignore[assignment]  # rows per prompt
    cliprange_value: float = 0.5  # value clipping around the old values
    state_masking: bool = False  # no value loss and no GAE step on retrieved tokens (see actor.state_masking)
    loss_agg_mode: str = "token-mean"
    grad_clip: float = 1.0
    # Seconds a critic rank may wait in one collective: the actor's (veRL's Megatron critic has the key)
    nccl_timeout: int = "${actor_rollout_ref.nccl_timeout}"  # type: ignore[assignment]


@dataclass
class KLControlConfig:
    type: str = "fixed"  # core_algos.KL_CONTROLLERS: fixed | adaptive
    kl_coef: float = 0.001  # (initial) coefficient of the KL penalty in the reward
    target_kl: float = 0.1  # adaptive only
    horizon: int = 10000  # adaptive only


@dataclass
class FilterGroupsConfig:
    """DAPO's dynamic sampling: drop prompt groups whose rows all score the same (zero advantage
    under GRPO) and refill the batch from the next prompts."""

    enable: bool = False
    metric: str = "score"  # per-row value compared in a group: score (= seq_final_reward) or a reward extra (em, f1, ...)
    max_num_gen_batches: int = 0  # generation batches per step at most (0 = no cap); then train on what was kept
    # How many prompts a refill rolls out. batch (veRL): data.train_batch_size, and the groups beyond those
    # missing are generated only to be dropped. missing: as many as groups are still missing, so a step
    # that lacks one group generates one more group rather than a whole batch.
    refill: str = "batch"


REFILL_MODES = ("batch", "missing")
GUIDE_KEEP_MODES = ("always", "unsolved")


@dataclass
class GuidesConfig:
    """Rows a rollout loop marks in the non-tensor column `guided`: demonstrations it put in a GRPO
    group (RAG-R1's gold trajectories, agent.guide_file). Not in veRL. A guide's ratio is 1 at the
    first mini-batch, so it is learnt by plain advantage-weighted imitation; these switch its share
    of the learning, so that RL on the policy's own samples can be told from imitation."""

    # Weight of the advantages of the rows the policy sampled itself, applied after the estimator:
    # 1 trains on them as on the guides; 0 trains on the guides alone, their advantages still
    # measured against the sampled group (`only` below trains on them without sampling).
    sampled_weight: float = 1.0
    # Weight of the guides' advantages, applied after the estimator like sampled_weight: below 1 a
    # guide still lifts its group's baseline in full but teaches less than a sample the policy found
    # itself (on the demo at 0.25 the guides' share barely fell: more groups kept theirs).
    guided_weight: float = 1.0
    # When a guide stays in its group: always; or unsolved, only when none of the group's own samples
    # scored above 0. Otherwise it is dropped after scoring, before advantages, so it neither
    # teaches nor lowers the baseline of samples that found the answer themselves (the batch then
    # has fewer rows).
    keep: str = "always"
    # True: no rollouts at all. Each step trains on the guides of its prompts alone, every guide at
    # the advantage the estimator gives it in a group of rollout.n whose own samples all failed
    # (core_algos.unsolved_group_guide_advantage), times guided_weight: imitation at the strongest
    # weight RL ever gives a guide, the guide-only control an RL result is compared with. It costs
    # only the guides' update, where sampled_weight=0 still samples every group to measure them against.
    only: bool = False


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "gae"  # gae | grpo
    gamma: float = 1.0
    lam: float = 1.0
    norm_adv_by_std_in_grpo: bool = True
    # Share of a below-average sample's (negative) advantage that is kept: 1 is the estimator as
    # published; 0 learns only from samples better than their group (positive sample reinforcement,
    # RAFT-like). Negatives push down whatever the policy sampled; when its samples are near copies of
    # its greedy answer, that moves greedy answers from one wrong answer to another.
    negative_advantage_scale: float = 1.0
    kl_penalty: str = "kl"  # estimator of the in-reward KL (core_algos.KL_ESTIMATORS): kl | abs | mse | low_var_kl
    use_kl_in_reward: bool = False
    kl_ctrl: KLControlConfig = field(default_factory=KLControlConfig)
    filter_groups: FilterGroupsConfig = field(default_factory=FilterGroupsConfig)
    guides: GuidesConfig = field(default_factory=GuidesConfig)


@dataclass
class TrainerConfig:
    total_epochs: int = 1
    # The three as in the SFT trainer (verl.trainer.steps). Steps of the run; None = total_epochs
    # passes over the data; set, it wins over total_epochs (the data repeats, or the run stops mid-epoch).
    total_training_steps: Optional[int] = None
    project_name: str = "rag_r1"
    experiment_name: str = "ppo"
    logger: list[str] = field(default_factory=lambda: ["console"])  # console | wandb | tensorboard
    nnodes: int = 1
    n_gpus_per_node: int = 1  # workers per node (CPU processes when there is no GPU)
    save_freq: int = -1  # > 0: every N steps and after the last; 0: after the last only; -1: never
    max_actor_ckpt_to_keep: Optional[int] = None  # newest actor checkpoints kept on disk; None = all
    max_critic_ckpt_to_keep: Optional[int] = None  # newest critic checkpoints kept on disk; None = all
    test_freq: int = -1  # validation, same meaning (val_before_train adds one before the first step)
    critic_warmup: int = 0  # steps that update only the critic
    val_before_train: bool = True
    default_local_dir: str = "checkpoints/${trainer.project_name}/${trainer.experiment_name}"
    resume_mode: str = "auto"  # auto | disable | <path to a global_step_N directory>
    device: str = "cpu"  # cpu | cuda


@dataclass
class RewardFunctionConfig:
    path: Optional[str] = None  # "module:function", or a .py file path with `name`
    name: str = "compute_score"  # function name when `path` is a file
    reward_kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of every call


@dataclass
class RayKwargsConfig:
    ray_init: dict[str, Any] = field(default_factory=dict)  # kwargs of ray.init (a null value: Ray's default)
    timeline_json_file: Optional[str] = None  # after the run, Ray's task timeline is written there (chrome://tracing)


@dataclass
class PPOConfig:
    data: DataConfig = field(default_factory=DataConfig)
    actor_rollout_ref: ActorRolloutRefConfig = field(default_factory=ActorRolloutRefConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    custom_reward_function: RewardFunctionConfig = field(default_factory=RewardFunctionConfig)
    agent: dict[str, Any] = field(default_factory=dict)  # free-form: the rollout loop validates it
    retriever: dict[str, Any] = field(default_factory=dict)  # free-form: the rollout loop validates it
    ray_kwargs: RayKwargsConfig = field(default_factory=RayKwargsConfig)  # veRL's home; `ray_init.*` is an alias


FREE_FORM_NODES = ("agent", "retriever", "ray_kwargs.ray_init")


def register_schema() -> None:
    """Make the schema available to Hydra as `ppo_trainer_schema` (used by configs/ppo_trainer.yaml)."""
    from hydra.core.config_store import ConfigStore

    schema = OmegaConf.structured(PPOConfig)
    for free_form in FREE_FORM_NODES:  # `agent.max_turns=N` works without Hydra's `+`
        OmegaConf.set_struct(OmegaConf.select(schema, free_form), False)
    ConfigStore.instance().store(name=SCHEMA_NAME, node=schema)


def compose_config(overrides: list[str] | None = None, config_name: str = CONFIG_NAME) -> DictConfig:
    """The config `main_ppo` would run with these `key=value` overrides (checked). Every refused veRL
    key and every problem of the check are named in one ValueError."""
    return compose_checked(config_name, overrides, register_schema, check_config, screen_overrides,
                           verl_keys.yaml_key_problem)


def screen_overrides(overrides: list[str]) -> verl_keys.Screened:
    """veRL's keys among command-line overrides: refused by name, or accepted (verl/trainer/verl_keys.py)."""
    return verl_keys.screen_overrides(overrides, schema_has)


def schema_has(key: str) -> bool:
    """Whether the dotted `key` is one of the schema's (any key under a free-form node is)."""
    node = PPOConfig()  # the dataclasses, not an OmegaConf node: this runs once per override
    parts = key.split(".")
    for end, part in enumerate(parts):
        if ".".join(parts[:end]) in FREE_FORM_NODES:
            return True
        if not is_dataclass(node) or part not in {f.name for f in fields(node)}:
            return False
        node = getattr(node, part)
    return True


def schema_node(path: str, values: dict[str, Any] | None = None) -> DictConfig:
    """The typed node at `path` ("critic", "actor_rollout_ref.rollout", ...; "" = the whole config) of the
    default config, with `values` merged in: for a part built without the trainer (an engine in evaluation
    or a benchmark, a worker in a test). Unknown keys raise; interpolations resolve against the schema's
    other defaults."""
    root = OmegaConf.structured(PPOConfig)
    if not path:
        return OmegaConf.merge(root, values or {})
    OmegaConf.update(root, path, values or {}, merge=True)
    return OmegaConf.select(root, path)


def rollout_config(**values: Any) -> DictConfig:
    """The `actor_rollout_ref.rollout` node with these values: the config of an engine (HFRollout)
    that generates outside the trainer."""
    return schema_node("actor_rollout_ref.rollout", values)


# veRL keys this trainer implements at one setting only: another value fails the check, naming the
# key, instead of being accepted and ignored. key -> (the values that work, why).
FIXED_KEYS: dict[str, tuple[tuple, str]] = {
    "actor_rollout_ref.hybrid_engine": ((True,), "the actor and the rollout always share the weights"),
    "actor_rollout_ref.actor.strategy": (("fsdp", "fsdp2"), "training always runs FSDP2"),
    "critic.strategy": (("fsdp", "fsdp2"), "training always runs FSDP2"),
    "critic.model.tokenizer_path": ((None,), "the critic reads the actor's token ids"),
    "actor_rollout_ref.rollout.free_cache_engine": ((True,), "the vLLM engine always sleeps between rollouts"),
    "actor_rollout_ref.actor.optim.total_training_steps": ((-1,), "the trainer sets it; use trainer.total_training_steps"),
    "critic.optim.total_training_steps": ((-1,), "the trainer sets it; use trainer.total_training_steps"),
}
ROLLOUT_ENGINES = ("hf", "vllm")
ROLLOUT_MODES = ("sync", "async")
SINGLE_TURN_LOOP = RolloutConfig.loop
FSDP_NODES = ("actor_rollout_ref.actor.fsdp_config", "actor_rollout_ref.ref.fsdp_config", "critic.model.fsdp_config")


def check_config(config: DictConfig) -> None:
    """Raise ValueError naming every unset mandatory key, every inconsistent setting and every key set
    to a value this trainer does not implement."""
    problems = [f"missing mandatory key '{key}'" for key in sorted(_missing_keys(config))]
    if problems:
        raise ValueError("config: " + "; ".join(problems))
    config = OmegaConf.merge(OmegaConf.structured(PPOConfig), config)  # unknown keys and bad types raise here
    problems = _unresolvable(config)  # veRL's `${oc.select:...,null}` into an int key, for one
    if problems:
        raise ValueError("config: " + "; ".join(problems))
    algo, arr, data = config.algorithm, config.actor_rollout_ref, config.data
    try:
        core_algos.get_adv_estimator_fn(algo.adv_estimator)
        with_critic = need_critic(config)
    except ValueError as error:
        problems.append(f"algorithm.adv_estimator: {error}")
        with_critic = True
    if algo.adv_estimator == "grpo" and arr.rollout.n < 2:
        problems.append("actor_rollout_ref.rollout.n must be >= 2 for algorithm.adv_estimator=grpo")
    problems += share_problems("algorithm.negative_advantage_scale", algo.negative_advantage_scale)
    problems += guides_problems(config)
    problems += _not_registered(config, "algorithm.kl_ctrl.type", core_algos.KL_CONTROLLERS)
    for key in ("algorithm.kl_penalty", "actor_rollout_ref.actor.kl_loss_type"):
        problems += _not_registered(config, key, core_algos.KL_ESTIMATORS)
    for key in ("actor_rollout_ref.actor.loss_agg_mode", "critic.loss_agg_mode"):
        problems += _not_registered(config, key, core_algos.LOSS_AGG_MODES)
    if data.truncation not in ("error", "left", "right"):
        problems.append(f"data.truncation={data.truncation!r}: expected error, left or right")
    for node in ("actor_rollout_ref.actor", "critic") if with_critic else ("actor_rollout_ref.actor",):
        mini = OmegaConf.select(config, f"{node}.ppo_mini_batch_size")
        if data.train_batch_size % mini:
            problems.append(f"data.train_batch_size={data.train_batch_size} is not a multiple of "
                            f"{node}.ppo_mini_batch_size={mini}")
    loop = arr.rollout.loop
    if ":" not in loop:
        problems.append(f"actor_rollout_ref.rollout.loop={loop!r}: expected 'module:Class'")
    if arr.rollout.name not in ROLLOUT_ENGINES:
        problems.append(f"actor_rollout_ref.rollout.name={arr.rollout.name!r} is not supported: "
                        f"{' | '.join(ROLLOUT_ENGINES)}")
    if arr.rollout.mode not in ROLLOUT_MODES:
        problems.append(f"actor_rollout_ref.rollout.mode={arr.rollout.mode!r}: expected {' | '.join(ROLLOUT_MODES)}")
    problems += _multi_turn_problems(arr.rollout)
    if arr.rollout.lag not in (0, 1):
        problems.append(f"actor_rollout_ref.rollout.lag={arr.rollout.lag}: expected 0 or 1")
    elif arr.rollout.lag == 1 and arr.rollout.mode != "async":
        problems.append("actor_rollout_ref.rollout.lag=1 needs actor_rollout_ref.rollout.mode=async (the next "
                        "rollout runs on the rollout servers while the actor trains)")
    if algo.filter_groups.metric == "reward":
        problems.append("algorithm.filter_groups.metric='reward' is veRL's name for the sequence score; "
                        "set score")
    if algo.filter_groups.refill not in REFILL_MODES:
        problems.append(f"algorithm.filter_groups.refill={algo.filter_groups.refill!r}: expected "
                        f"{' | '.join(REFILL_MODES)}")
    for backend in config.trainer.logger:
        if backend not in LOGGER_BACKENDS:
            problems.append(f"trainer.logger has {backend!r}: expected one of {', '.join(LOGGER_BACKENDS)}")
    problems += _unsupported(config)
    problems += _dtype_problems(config)
    if problems:
        raise ValueError("config: " + "; ".join(problems))


def _dtype_problems(config: DictConfig) -> list[str]:
    problems = [problem for node in FSDP_NODES
                for problem in precision.dtype_problems(f"{node}.dtype", OmegaConf.select(config, f"{node}.dtype"))]
    return problems + precision.dtype_problems("actor_rollout_ref.rollout.dtype", config.actor_rollout_ref.rollout.dtype,
                                               precision.ENGINE_DTYPES)


def _multi_turn_problems(rollout: DictConfig) -> list[str]:
    """veRL's multi_turn keys against the rollout loop, which decides whether there are turns."""
    single_turn, multi_turn = rollout.loop == SINGLE_TURN_LOOP, rollout.multi_turn
    key = "actor_rollout_ref.rollout.multi_turn"
    problems = []
    if multi_turn.enable is True and single_turn:
        problems.append(f"{key}.enable=true needs a multi-turn actor_rollout_ref.rollout.loop (SingleTurnLoop "
                        f"generates once; the search agent: rag_r1.llm_agent.loop:SearchAgentLoop)")
    if multi_turn.enable is False and not single_turn:
        problems.append(f"{key}.enable=false disagrees with actor_rollout_ref.rollout.loop={rollout.loop!r}")
    if multi_turn.max_assistant_turns is not None and single_turn:
        problems.append(f"{key}.max_assistant_turns={multi_turn.max_assistant_turns} needs a multi-turn "
                        f"actor_rollout_ref.rollout.loop (SingleTurnLoop generates once)")
    path = multi_turn.tool_config_path
    if path is not None and single_turn:
        problems.append(f"{key}.tool_config_path={path} needs a multi-turn actor_rollout_ref.rollout.loop that calls "
                        f"tools (SingleTurnLoop calls none; the search agent: rag_r1.llm_agent.loop:SearchAgentLoop)")
    if path is not None and not Path(path).is_file():
        problems.append(f"{key}.tool_config_path={path}: no such file")
    return problems


def guides_problems(config: DictConfig) -> list[str]:
    """Problems of algorithm.guides: its weight is a share, its keep mode one of GUIDE_KEEP_MODES,
    keep=unsolved and only (batches whose row count varies) run on one worker: the worker group pads
    a batch to a multiple of the workers with repeated rows, which an update would train on twice;
    only takes its guides' advantage from a group estimator; and guides
    (the search agent's agent.guide_file) are not trained one step off: no policy sampled a guide's
    tokens, so rollout.lag=1 has no sampler log-prob for their ratio."""
    guides = config.algorithm.guides
    problems = share_problems("algorithm.guides.sampled_weight", guides.sampled_weight)
    problems += share_problems("algorithm.guides.guided_weight", guides.guided_weight)
    if guides.keep not in GUIDE_KEEP_MODES:
        problems.append(f"algorithm.guides.keep={guides.keep!r}: expected one of {', '.join(GUIDE_KEEP_MODES)}")
    world = config.trainer.nnodes * config.trainer.n_gpus_per_node
    varying = [key for key, on in (("algorithm.guides.keep=unsolved", guides.keep == "unsolved"),
                                   ("algorithm.guides.only=true", guides.only)) if on]
    if varying and world > 1:
        problems.append(f"{' with '.join(varying)} with {world} workers (trainer.nnodes x "
                        "trainer.n_gpus_per_node) is not supported: the batch's rows vary (dropped guides, "
                        "prompts without one), and the workers would get it padded with repeated rows; use one worker")
    if guides.only and _needs_critic(config.algorithm.adv_estimator):
        problems.append(f"algorithm.guides.only=true with algorithm.adv_estimator={config.algorithm.adv_estimator}: "
                        "a guide's advantage is taken from a group of rollout.n; use a group estimator (grpo)")
    guide_file = (config.get("agent") or {}).get("guide_file")
    if guide_file and config.actor_rollout_ref.rollout.lag == 1:
        problems.append(f"actor_rollout_ref.rollout.lag=1 with agent.guide_file={guide_file!r}: a guide's tokens "
                        "were sampled by no policy, so one step off has no sampler log-prob for their ratio; "
                        "use lag 0 with guides")
    return problems


def _needs_critic(estimator: str) -> bool:
    """Whether a registered estimator needs a critic; False for an unknown name, which the caller's
    estimator check reports."""
    try:
        return core_algos.adv_estimator_needs_critic(estimator)
    except ValueError:
        return False


def share_problems(name: str, value: float) -> list[str]:
    """[] when `value` is a share (0 to 1), else the problem naming `name`; the pipeline checks its own
    flag for algorithm.negative_advantage_scale with it before any stage runs."""
    return [] if 0.0 <= value <= 1.0 else [f"{name}={value}: expected a share between 0 and 1"]


def _not_registered(config: DictConfig, key: str, registry: dict) -> list[str]:
    value = OmegaConf.select(config, key)
    return [] if value in registry else [f"{key}={value!r}: expected one of {', '.join(sorted(registry))}"]


def _unsupported(config: DictConfig) -> list[str]:
    """Problems of the keys set to a value this trainer does not implement."""
    problems = []
    for key, (works, why) in FIXED_KEYS.items():
        value = OmegaConf.select(config, key)
        if value not in works:
            problems.append(f"{key}={value!r} is not supported ({why}); supported: {', '.join(map(repr, works))}")
    world = config.trainer.nnodes * config.trainer.n_gpus_per_node
    for node in FSDP_NODES:
        size = OmegaConf.select(config, f"{node}.fsdp_size")
        if size not in (-1, world):
            problems.append(f"{node}.fsdp_size={size} is not supported (every model is sharded over all "
                            f"{world} workers); supported: -1 or {world}")
    rollout = config.actor_rollout_ref.rollout
    if rollout.tensor_model_parallel_size > 1 and (rollout.name != "vllm" or rollout.mode == "async"):
        problems.append(f"actor_rollout_ref.rollout.tensor_model_parallel_size={rollout.tensor_model_parallel_size} "
                        f"is not supported with rollout.name={rollout.name}, mode={rollout.mode} (vllm in sync mode "
                        f"only: an async server runs one engine per GPU)")
    return problems


def _unresolvable(node: DictConfig, prefix: str = "") -> list[str]:
    """Problems of the values that do not resolve: an interpolation to a missing key, or to a value
    its key's type refuses."""
    problems = []
    for key in node.keys():
        try:
            child = node[key]
        except OmegaConfBaseException as error:
            problems.append(f"{prefix}{key}: {str(error).splitlines()[0]}")
            continue
        if isinstance(child, DictConfig):
            problems += _unresolvable(child, f"{prefix}{key}.")
    return problems


def _missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys left at `???`, found without resolving interpolations (which would raise on them)."""
    missing = []
    for key in node.keys():
        if OmegaConf.is_missing(node, key):
            missing.append(f"{prefix}{key}")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            missing += _missing_keys(child, f"{prefix}{key}.")
    return missing


def need_critic(config: DictConfig) -> bool:
    return core_algos.adv_estimator_needs_critic(config.algorithm.adv_estimator)


def need_reference_policy(config: DictConfig) -> bool:
    return bool(config.algorithm.use_kl_in_reward or config.actor_rollout_ref.actor.use_kl_loss)
