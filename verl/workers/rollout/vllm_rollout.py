"""Rollout with vLLM (GPU only), one engine per tensor-parallel group of training ranks.

The engine starts with dummy weights and asleep. FSDPVLLMShardingManager loads the actor's weights
into it (waking it) the first time it generates with a new version of them, and puts it back to
sleep, freeing its GPU memory, when the worker's training passes start; an agent's turns in between
reuse the loaded weights and vLLM's prefix cache.

Each group of `tensor_model_parallel_size` consecutive training ranks runs one independent engine
("external_launcher": vLLM joins the existing torch.distributed world instead of spawning
processes), and the sharding manager gives all ranks of a group the same prompts. No
`data_parallel_size` is passed: with the external launcher it would make vLLM run every rank as
one data-parallel engine that steps in lockstep. vLLM is imported here only, so the CPU path never
needs it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from verl.protocol import DataProto
from verl.utils import precision
from verl.utils.distributed import device
from verl.workers.rollout.base import BaseRollout, assemble_output, pad_responses, prompt_token_lists
from verl.workers.rollout.server import SamplingSettings


def engine_settings(config: DictConfig) -> dict:
    """The engine arguments every vLLM engine here takes from rollout.*: it starts asleep-capable with
    dummy weights (the actor's arrive after each update) and reports the log-probs of the
    distribution it samples from (logits / temperature), as the actor computes them."""
    return dict(dtype=precision.dtype_name(precision.engine_dtype(config.dtype, use_gpu=True)),
                enforce_eager=config.enforce_eager, gpu_memory_utilization=config.gpu_memory_utilization,
                max_model_len=config.max_model_len, max_num_batched_tokens=config.max_num_batched_tokens,
                max_num_seqs=config.max_num_seqs, enable_prefix_caching=config.enable_prefix_caching,
                enable_sleep_mode=True, load_format="dummy", logprobs_mode="processed_logprobs")


class VLLMRollout(BaseRollout):
    """`generate_sequences` also returns `rollout_log_probs` [B, R] float32 (0 on padding): vLLM's
    log-prob of each sampled token under the distribution it sampled from, logits / temperature, as
    the trainer scores it. With top-k or top-p on, vLLM's is over the truncated distribution (its
    "processed" log-probs; there is no mode between raw and processed), the trainer's is not."""

    def __init__(self, model_path: str, config: DictConfig, tokenizer):
        if device().type != "cuda":
            raise ValueError("rollout.name=vllm needs GPUs; use rollout.name=hf on CPU")
        from vllm import LLM

        self.config = config
        self.tokenizer = tokenizer
        tp_size = config.tensor_model_parallel_size
        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            tensor_parallel_size=tp_size,
            distributed_executor_backend="external_launcher",
            # custom all-reduce shares buffers between GPUs (CUDA IPC) mapped once at start-up, while sleep
            # releases and re-maps the engine's memory: NCCL, as veRL does
            disable_custom_all_reduce=tp_size > 1,
            # the ranks of one TP group must sample identically, different groups independently
            seed=config.seed + dist.get_rank() // tp_size,
            **engine_settings(config),
        )
        self.llm.sleep(level=2)

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        from vllm.inputs import TokensPrompt

        meta = prompts.meta_info
        max_tokens = int(meta.get("max_new_tokens", self.config.response_length))
        requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_lists(prompts)]
        params = sampling_params(SamplingSettings.from_meta(self.config, meta, max_tokens))
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        completions = [out.outputs[0] for out in outputs]
        tokens = [list(c.token_ids) for c in completions]
        output = assemble_output(prompts, *pad_responses(tokens, max_tokens, self.tokenizer.pad_token_id))
        output.batch["rollout_log_probs"] = sampled_log_probs(completions, max_tokens)
        return output


def sampling_params(settings: SamplingSettings):
    """vLLM's SamplingParams for these settings: one sample, the stop string kept, and the sampled
    token's own log-prob returned."""
    from vllm import SamplingParams

    greedy = settings.greedy
    return SamplingParams(
        n=1,
        max_tokens=settings.max_new_tokens,
        temperature=0.0 if greedy else settings.temperature,
        top_p=1.0 if greedy else settings.top_p,
        top_k=-1 if greedy else settings.top_k,
        seed=settings.seed,
        stop=list(settings.stop) or None,
        # the contract keeps the stop string; its token_ids end with the token completing it
        include_stop_str_in_output=True,
        logprobs=0,  # the sampled token's own log-prob, no alternatives
    )


def completion_log_probs(completion) -> list[float]:
    """The log-prob of each token a vLLM CompletionOutput sampled (generated with
    `SamplingParams(logprobs=0)`: its `logprobs` hold one {token_id: Logprob} per position with the
    sampled token among the keys)."""
    return [position[token].logprob for position, token in zip(completion.logprobs, completion.token_ids)]


def sampled_log_probs(completions: list, width: int) -> torch.Tensor:
    """[B, width] float32: row b's log-prob of each token it sampled, 0 after its last token."""
    values = torch.zeros(len(completions), width, dtype=torch.float32)
    for row, completion in enumerate(completions):
        sampled = completion_log_probs(completion)[:width]
        values[row, :len(sampled)] = torch.tensor(sampled, dtype=torch.float32)
    return values
