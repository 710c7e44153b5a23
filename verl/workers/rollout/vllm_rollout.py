"""Rollout with vLLM (GPU only), one engine per training rank inside the worker process.

The engine starts with dummy weights and asleep; FSDPVLLMShardingManager wakes it and copies the
actor's current weights in before each generation, and puts it back to sleep (freeing its GPU
memory for training) afterwards. With tensor_model_parallel_size > 1 the engine's ranks are
consecutive training ranks ("external_launcher": vLLM joins the existing torch.distributed world
instead of spawning its own processes); the sharding manager gives all ranks of a TP group the
same prompts. vLLM is imported here only, so the CPU path never needs it.
"""
from __future__ import annotations

from omegaconf import DictConfig

from verl.protocol import DataProto
from verl.workers.rollout.base import BaseRollout, assemble_output, pad_responses, prompt_token_lists


class VLLMRollout(BaseRollout):
    def __init__(self, model_path: str, config: DictConfig, tokenizer):
        import torch.distributed as dist
        from vllm import LLM

        self.config = config
        self.tokenizer = tokenizer
        tp_size = config.tensor_model_parallel_size
        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            # external launcher: the training world is the engine's world, TP x DP of it
            tensor_parallel_size=tp_size,
            data_parallel_size=dist.get_world_size() // tp_size,
            distributed_executor_backend="external_launcher",
            dtype=config.dtype,
            enforce_eager=config.enforce_eager,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.prompt_length + config.response_length,
            max_num_batched_tokens=config.max_num_batched_tokens,
            enable_prefix_caching=config.enable_prefix_caching,
            enable_sleep_mode=True,
            load_format="dummy",  # real weights come from the actor before every rollout
            seed=0,  # ranks of one TP group must sample identically
        )
        self.llm.sleep(level=2)

    def clear_cache(self) -> None:
        self.llm.reset_prefix_cache()

    def _sampling_params(self, meta: dict, max_tokens: int):
        from vllm import SamplingParams

        greedy = not meta.get("do_sample", self.config.do_sample)
        return SamplingParams(
            n=1,
            max_tokens=max_tokens,
            temperature=0.0 if greedy else meta.get("temperature", self.config.temperature),
            top_p=1.0 if greedy else meta.get("top_p", self.config.top_p),
            top_k=-1 if greedy else meta.get("top_k", self.config.top_k),
            stop=list(meta.get("stop") or []) or None,
            # the contract keeps the stop string; its token_ids end with the token completing it
            include_stop_str_in_output=True,
        )

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        from vllm.inputs import TokensPrompt

        meta = prompts.meta_info
        max_tokens = int(meta.get("max_new_tokens", self.config.response_length))
        requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_lists(prompts)]
        outputs = self.llm.generate(requests, self._sampling_params(meta, max_tokens), use_tqdm=False)
        tokens = [list(out.outputs[0].token_ids) for out in outputs]
        return assemble_output(prompts, *pad_responses(tokens, max_tokens, self.tokenizer.pad_token_id))
