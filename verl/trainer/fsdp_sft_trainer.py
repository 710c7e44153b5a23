"""Supervised fine-tuning on sharegpt conversations, loss on the model's own tokens only.

    python -m verl.trainer.fsdp_sft_trainer data.train_files=sft.jsonl model.partial_pretrain=PATH
    torchrun --nproc_per_node=2 -m verl.trainer.fsdp_sft_trainer ...     # FSDP2 data parallel (gloo/nccl)

One process trains the plain HF model; under torchrun every decoder layer and the root are sharded
with FSDP2 (`fully_shard`) and each rank takes its slice of every global batch. The loss is the mean
NLL over ALL loss-masked tokens of the global batch: every micro-batch's summed NLL is divided by the
global token count (all-reduced before the first backward), so gradient accumulation and data
parallelism give the gradient of one big batch. Checkpoints under `trainer.default_local_dir`:
`global_step_{k}/` is a loadable HF model + tokenizer, plus `optim.pt` and `trainer_state.pt` to
resume from (`trainer.resume_mode=auto` picks the latest).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from omegaconf import MISSING, DictConfig, OmegaConf
from tqdm import tqdm

from verl.trainer.steps import is_due, run_length
from verl.utils import checkpoint as ckpt
from verl.utils import precision
from verl.utils.dataset.sft_dataset import SFTDataset
from verl.utils.distributed import resolve_device
from verl.utils.fsdp_utils import mixed_precision_policy
from verl.utils.hydra_config import CONFIG_DIR, compose_checked
from verl.utils.torch_functional import HEAD_CHUNK_TOKENS, head_scores, token_scores_in_chunks
from verl.utils.tracking import BACKENDS, Tracking

CONFIG_NAME = "sft_trainer"
SCHEMA_NAME = "sft_trainer_schema"
OPTIM_FILE = "optim.pt"


@dataclass
class DataConfig:
    train_files: Any = MISSING  # sharegpt file(s): .json list, .jsonl, .parquet, or dataset_info names
    val_files: Any = None  # same forms; None = no validation
    dataset_dir: Optional[str] = None  # folder with a LLaMA-Factory dataset_info.json to resolve names
    max_length: int = 2048  # tokens per conversation, prompt included
    truncation: str = "right"  # right (cut the tail, mask stays aligned) | error
    train_batch_size: int = 16  # conversations per optimizer step, over all ranks
    micro_batch_size_per_gpu: int = 2  # conversations per forward/backward on one rank


@dataclass
class FSDPConfig:
    # The dtype forwards and backwards compute in: auto | bfloat16 | float32, as the PPO trainer's
    # fsdp_config.dtype (auto: bf16 on a GPU and on a CPU with bf16 instructions, AVX512-BF16 or AMX;
    # fp32 on other CPUs). Weights, gradients and Adam's states stay fp32 and the loss is computed in
    # fp32 from the logits: one process runs the forward under torch.autocast, FSDP2 casts the
    # gathered weights.
    dtype: str = "auto"


@dataclass
class ModelConfig:
    partial_pretrain: str = MISSING  # HF model directory (or hub id) to start from
    enable_gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    trust_remote_code: bool = False
    fsdp_config: FSDPConfig = field(default_factory=FSDPConfig)


@dataclass
class OptimConfig:
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.01
    warmup_steps_ratio: float = 0.0  # linear warm-up over this fraction of the total steps
    lr_scheduler: str = "cosine"  # cosine (to 0) | constant, after warm-up
    clip_grad: float = 1.0  # max global gradient norm


@dataclass
class TrainerConfig:
    default_local_dir: str = "checkpoints/${trainer.project_name}/${trainer.experiment_name}"
    project_name: str = "rag_r1"
    experiment_name: str = "sft"
    total_epochs: int = 1
    # The three as in the PPO trainer (verl.trainer.steps). Steps of the run; None = total_epochs
    # passes over the data; set, it wins over total_epochs (the data repeats, or the run stops mid-epoch).
    total_training_steps: Optional[int] = None
    save_freq: int = 0  # > 0: every N steps and after the last; 0: after the last only; -1: never
    max_ckpt_to_keep: Optional[int] = None  # newest checkpoints kept on disk; None = all
    test_freq: int = 0  # validation (with data.val_files), same meaning
    logger: list[str] = field(default_factory=lambda: ["console"])  # console | wandb | tensorboard
    seed: int = 1  # data order and initial RNG
    resume_mode: str = "auto"  # auto | disable | <path to a global_step_N directory>
    device: str = "auto"  # auto (cuda if present) | cpu | cuda


@dataclass
class SFTConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_schema() -> None:
    """Make the schema available to Hydra as `sft_trainer_schema` (used by configs/sft_trainer.yaml)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=SFTConfig)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The config `python -m verl.trainer.fsdp_sft_trainer` would run with these overrides (checked)."""
    return compose_checked(CONFIG_NAME, overrides, register_schema, check_config)


def check_config(config: DictConfig) -> None:
    """Raise ValueError naming every unset mandatory key and every bad value."""
    config = OmegaConf.merge(OmegaConf.structured(SFTConfig), config)  # unknown keys raise here
    problems = [f"missing mandatory key '{key}'" for key in sorted(OmegaConf.missing_keys(config))]
    data, optim, trainer = config.data, config.optim, config.trainer
    if data.truncation not in ("right", "error"):
        problems.append(f"data.truncation={data.truncation!r}: expected right or error")
    if data.micro_batch_size_per_gpu < 1 or data.train_batch_size % data.micro_batch_size_per_gpu:
        problems.append(f"data.train_batch_size={data.train_batch_size} is not a multiple of "
                        f"data.micro_batch_size_per_gpu={data.micro_batch_size_per_gpu}")
    if optim.lr_scheduler not in ("cosine", "constant"):
        problems.append(f"optim.lr_scheduler={optim.lr_scheduler!r}: expected cosine or constant")
    if not 0.0 <= optim.warmup_steps_ratio <= 1.0:
        problems.append(f"optim.warmup_steps_ratio={optim.warmup_steps_ratio}: expected a value in [0, 1]")
    if trainer.device not in ("auto", "cpu", "cuda"):
        problems.append(f"trainer.device={trainer.device!r}: expected auto, cpu or cuda")
    if trainer.max_ckpt_to_keep is not None and trainer.max_ckpt_to_keep < 1:
        problems.append(f"trainer.max_ckpt_to_keep={trainer.max_ckpt_to_keep}: expected >= 1, or null to keep all")
    problems += precision.dtype_problems("model.fsdp_config.dtype", config.model.fsdp_config.dtype)
    problems += [f"trainer.logger has {b!r}: expected some of {BACKENDS}" for b in trainer.logger if b not in BACKENDS]
    if problems:
        raise ValueError("config: " + "; ".join(problems))


# ---------------------------------------------------------------- distributed setup and the model

def init_distributed(device: str) -> tuple[int, int]:
    """(rank, world_size); joins the process group torchrun describes in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device == "cuda":  # before the process group, so NCCL binds each rank to its own GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def build_model(path: str, config: ModelConfig, device: str, world_size: int) -> torch.nn.Module:
    """The HF causal LM with fp32 weights, computing in model.fsdp_config.dtype: sharded with FSDP2
    (each decoder layer, then the root) when world_size > 1, else its forward under torch.autocast."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 trust_remote_code=config.trust_remote_code)
    model.config.use_cache = False
    if config.enable_gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(device)
    if world_size > 1:
        from torch.distributed.fsdp import fully_shard

        mp = mixed_precision_policy(config.fsdp_config.dtype, use_gpu=device == "cuda")
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    dtype = precision.compute_dtype(config.fsdp_config.dtype, use_gpu=device == "cuda")
    if dtype != torch.float32:
        # on the instance, so every caller (training, validation) computes in it; backward follows
        model.forward = torch.autocast(device_type=device, dtype=dtype)(model.forward)
    return model


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str):
    """Multiplier of optim.lr at a step: linear warm-up from lr/warmup, then cosine to 0 or constant."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


# ---------------------------------------------------------------- the loss and one optimizer step

def _all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def masked_nll_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token NLL over loss-masked targets, their count). Token t+1 is predicted at t.

    Only positions that predict a target go through the LM head, a chunk of tokens at a time
    (torch_functional.head_scores): prompts and retrieved blocks are most of an agent trajectory,
    and the vocabulary projection with its fp32 logits is the largest activation."""
    predicts_target_BT = torch.zeros_like(batch["loss_mask"], dtype=torch.bool)
    predicts_target_BT[:, :-1] = batch["loss_mask"][:, 1:].bool()
    targets_N = batch["input_ids"][:, 1:][predicts_target_BT[:, :-1]]
    head = model.get_output_embeddings()

    def score(hidden_NH: torch.Tensor):
        # head.forward: the head's own computation, without calling the scoring hook again
        return token_scores_in_chunks(hidden_NH, targets_N, head.forward, 1.0, HEAD_CHUNK_TOKENS, with_entropy=False)

    with head_scores(head, predicts_target_BT, score) as scores:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              position_ids=batch["position_ids"], use_cache=False)
    ((log_probs_N, _),) = scores
    return -log_probs_N.sum(), targets_N.new_tensor(targets_N.numel())


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list[dict[str, torch.Tensor]],
               clip_grad: float, world_size: int = 1) -> dict[str, float]:
    """Accumulate over this rank's micro-batches, clip, step. Returns train/loss (global token mean),
    train/grad_norm and the global token counts."""
    local_targets = sum(int(mb["loss_mask"][:, 1:].sum()) for mb in micro_batches)
    local_tokens = sum(int(mb["attention_mask"].sum()) for mb in micro_batches)
    counts = _all_reduce_sum(torch.tensor([local_targets, local_tokens], dtype=torch.float64))
    denominator = max(counts[0].item(), 1.0)
    optimizer.zero_grad(set_to_none=True)
    nll_total = torch.zeros((), dtype=torch.float64)
    for mb in micro_batches:
        nll_sum, _ = masked_nll_sum(model, mb)
        # FSDP averages gradients over ranks; scaling by world_size turns that average back into
        # the sum over ranks, so the gradient is d(global NLL sum)/d(theta) / global token count.
        (nll_sum * (world_size / denominator)).backward()
        nll_total += nll_sum.detach().double().cpu()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
        grad_norm = grad_norm.full_tensor()
    grad_norm = float(grad_norm)
    if math.isfinite(grad_norm):
        optimizer.step()
    else:  # skip the update rather than poison the weights; the metric shows it
        optimizer.zero_grad(set_to_none=True)
    loss = _all_reduce_sum(nll_total).item() / denominator
    return {"train/loss": loss, "train/grad_norm": grad_norm,
            "train/target_tokens": counts[0].item(), "train/tokens": counts[1].item()}


@torch.no_grad()
def validation_loss(model: torch.nn.Module, dataset: SFTDataset, micro_batch_size: int, rank: int, world_size: int,
                    device: str) -> float:
    """Token-mean NLL over every validation row (none dropped). Ranks take rows rank::world and run the
    same number of forwards (FSDP needs it): a rank out of rows repeats row 0 with its mask zeroed."""
    model.eval()
    rows = list(range(rank, len(dataset), world_size))
    n_forwards = math.ceil(math.ceil(len(dataset) / world_size) / micro_batch_size)
    totals = torch.zeros(2, dtype=torch.float64)
    for k in range(n_forwards):
        chunk = [dataset[i] for i in rows[k * micro_batch_size:(k + 1) * micro_batch_size]]
        batch = dataset.collate(chunk or [dataset[0]])
        if not chunk:
            batch["loss_mask"].zero_()
        nll_sum, count = masked_nll_sum(model, {key: v.to(device) for key, v in batch.items()})
        totals += torch.tensor([nll_sum.item(), count.item()], dtype=torch.float64)
    model.train()
    totals = _all_reduce_sum(totals)
    return totals[0].item() / max(totals[1].item(), 1.0)


def step_rows(step: int, n_rows: int, batch_size: int, seed: int) -> list[int]:
    """Row indices of global step `step` (0-based): a fresh permutation per epoch, seeded by seed + epoch,
    cut into full batches. A pure function of the step, so resuming needs only the step."""
    steps_per_epoch = n_rows // batch_size
    epoch, k = divmod(step, steps_per_epoch)
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + epoch))
    return order[k * batch_size:(k + 1) * batch_size].tolist()


def make_micro_batches(dataset: SFTDataset, rows: list[int], size: int, device: str) -> list[dict[str, torch.Tensor]]:
    """This rank's rows as padded micro-batches of `size` rows on `device`."""
    chunks = [rows[j:j + size] for j in range(0, len(rows), size)]
    return [{k: v.to(device) for k, v in dataset.collate([dataset[i] for i in chunk]).items()} for chunk in chunks]


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(root: str, step: int, model, tokenizer, optimizer, scheduler, rank: int) -> Path:
    """global_step_{step}/: HF model + tokenizer, optim.pt, trainer_state.pt; then marks it the latest.
    Collective under FSDP2: every rank gathers, rank 0 writes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=full)
    optim_state = get_optimizer_state_dict(model, optimizer, options=full)
    directory = ckpt.step_dir(root, step)
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory, state_dict=model_state)
        tokenizer.save_pretrained(directory)
        torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict()}, directory / OPTIM_FILE)
        ckpt.save_trainer_state(directory, step, dataloader={"step": step})
        ckpt.mark_latest(root, step)
    if dist.is_initialized():
        dist.barrier()
    return directory


def load_optimizer(directory: Path, model, optimizer, scheduler) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = torch.load(directory / OPTIM_FILE, weights_only=False)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optimizer"], options=options)
    scheduler.load_state_dict(state["scheduler"])


# ---------------------------------------------------------------- the main loop

def fit(config: SFTConfig) -> dict[str, float]:
    """Train as configured; returns the last logged metrics (handy for tests and scripts)."""
    from transformers import AutoTokenizer

    data, optim_cfg, trainer = config.data, config.optim, config.trainer
    device = resolve_device(trainer.device)
    rank, world = init_distributed(device)
    if data.train_batch_size % (world * data.micro_batch_size_per_gpu):
        raise ValueError(f"data.train_batch_size={data.train_batch_size} must be a multiple of world size {world} "
                         f"x data.micro_batch_size_per_gpu={data.micro_batch_size_per_gpu}")
    torch.manual_seed(trainer.seed)
    resume_dir = ckpt.resolve_resume_dir(trainer.resume_mode, trainer.default_local_dir)

    tokenizer = AutoTokenizer.from_pretrained(config.model.partial_pretrain,
                                              trust_remote_code=config.model.trust_remote_code)
    train_set = SFTDataset(data.train_files, tokenizer, data.max_length, data.truncation, data.dataset_dir,
                           progress=rank == 0)
    val_set = SFTDataset(data.val_files, tokenizer, data.max_length, data.truncation, data.dataset_dir,
                         progress=rank == 0) if data.val_files else None
    steps_per_epoch = len(train_set) // data.train_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"data.train_batch_size={data.train_batch_size} > {len(train_set)} training conversations")
    total_steps = run_length(steps_per_epoch, trainer.total_epochs, trainer.total_training_steps)

    model = build_model(str(resume_dir or config.model.partial_pretrain), config.model, device, world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim_cfg.lr, betas=tuple(optim_cfg.betas),
                                  weight_decay=optim_cfg.weight_decay)
    warmup = int(optim_cfg.warmup_steps_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, optim_cfg.lr_scheduler))
    step = 0
    if resume_dir is not None:
        load_optimizer(resume_dir, model, optimizer, scheduler)
        step = ckpt.load_trainer_state(resume_dir)["global_step"]
    tracker = Tracking(trainer.project_name, trainer.experiment_name, trainer.logger,
                       config=OmegaConf.to_container(OmegaConf.structured(config), resolve=True),
                       log_dir=str(Path(trainer.default_local_dir) / "tensorboard"),
                       jsonl_path=str(Path(trainer.default_local_dir) / "metrics.jsonl"))
    tracker.rewind(step if resume_dir is not None else None)

    per_rank = data.train_batch_size // world
    metrics: dict[str, float] = {}
    progress = tqdm(total=total_steps, initial=step, desc="sft", disable=rank != 0)
    model.train()
    while step < total_steps:
        rows = step_rows(step, len(train_set), data.train_batch_size, trainer.seed)[rank * per_rank:(rank + 1) * per_rank]
        micro_batches = make_micro_batches(train_set, rows, data.micro_batch_size_per_gpu, device)
        started = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        metrics = train_step(model, optimizer, micro_batches, optim_cfg.clip_grad, world)
        scheduler.step()
        step += 1
        metrics.update({"train/lr": lr, "train/epoch": (step - 1) // steps_per_epoch,
                        "perf/tokens_per_s": metrics["train/tokens"] / (time.perf_counter() - started)})
        last = step == total_steps
        if val_set is not None and is_due(trainer.test_freq, step, last):
            metrics["val/loss"] = validation_loss(model, val_set, data.micro_batch_size_per_gpu, rank, world, device)
        tracker.log(metrics, step=step)
        if is_due(trainer.save_freq, step, last):
            save_checkpoint(trainer.default_local_dir, step, model, tokenizer, optimizer, scheduler, rank)
            if rank == 0:
                ckpt.prune(trainer.default_local_dir, None, trainer.max_ckpt_to_keep)
        progress.update(1)
    progress.close()
    tracker.finish()
    return metrics


def to_config(config: DictConfig) -> SFTConfig:
    """The checked typed config (interpolations resolved)."""
    check_config(config)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SFTConfig), config))


def main() -> None:
    import hydra

    register_schema()

    @hydra.main(config_path=str(CONFIG_DIR), config_name=CONFIG_NAME, version_base=None)
    def run(config: DictConfig) -> None:
        fit(to_config(config))
        if dist.is_initialized():
            dist.destroy_process_group()

    run()


if __name__ == "__main__":
    main()
