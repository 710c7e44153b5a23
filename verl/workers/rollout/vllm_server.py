"""The rollout server on vLLM's AsyncLLM (GPU only): vLLM batches the requests continuously itself.

One engine per training rank, on the rank's own GPU (tensor_model_parallel_size=1: a Ray worker
sees only its GPU). It starts with dummy weights; `update_weights` streams the actor's weights in
through vLLM's CUDA IPC weight transfer: each tensor is copied to the GPU in the engine's dtype
and shared by handle, the engine process loads them between `start_weight_update` and
`finish_weight_update`, and the copies are freed afterwards. `release()` puts the engine into
level-2 sleep (weights and KV cache freed for training), so the next rollout loads the weights
again; a loaded engine keeps them and its prefix cache (vLLM's automatic prefix caching) across an
agent's turns. The engine arguments are VLLMRollout's (vllm_rollout.py), sampling and log-probs
too: processed log-probs, after temperature (with top-k/top-p on, of the truncated distribution).
vLLM is imported here only, so the CPU path never needs it.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from verl.utils import precision
from verl.utils.distributed import device
from verl.workers.rollout.server import GenerationOutput, RolloutServer, SamplingSettings, Weights
from verl.workers.rollout.vllm_rollout import completion_log_probs, engine_settings, sampling_params


def gpu_uuid() -> str:
    """The id under which vLLM's IPC weight transfer looks up a handle: this process's GPU."""
    return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


def ipc_update_info(weights: list[tuple[str, torch.Tensor]]) -> dict:
    """The `update_info` of vLLM's IPC weight transfer for these tensors (unpacked: one handle each).
    The handles do not keep the tensors alive: the caller holds them until the update finished."""
    from torch.multiprocessing.reductions import reduce_tensor

    uuid = gpu_uuid()
    return {
        "names": [name for name, _ in weights],
        "dtype_names": [str(tensor.dtype).split(".")[-1] for _, tensor in weights],
        "shapes": [list(tensor.shape) for _, tensor in weights],
        "ipc_handles": [{uuid: reduce_tensor(tensor)[1]} for _, tensor in weights],
    }


class VLLMServer(RolloutServer):
    def __init__(self, model_path: str, config: DictConfig, seed: int):
        """`config`: the rollout node; `seed`: the engine's (each rank samples independently)."""
        if device().type != "cuda":
            raise ValueError("rollout.name=vllm needs GPUs; use rollout.name=hf on CPU")
        if config.tensor_model_parallel_size != 1:
            raise ValueError("rollout.mode=async with rollout.name=vllm runs one engine per GPU: set "
                             "rollout.tensor_model_parallel_size=1")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.dtype = precision.engine_dtype(config.dtype, use_gpu=True)
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
            model=model_path,
            tokenizer=model_path,  # stop strings are matched in detokenized text
            seed=seed,
            weight_transfer_config={"backend": "ipc"},  # the actor's weights come in through update_weights
            **engine_settings(config),
            disable_log_stats=True,
        ))
        self.asleep = False
        self.loaded = False  # dummy weights
        self.transfer_ready = False

    @property
    def holds_weights(self) -> bool:
        return self.loaded

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingSettings) -> GenerationOutput:
        from vllm.inputs import TokensPrompt

        final = None
        async for output in self.engine.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)),
                                                 sampling_params(params), request_id):
            final = output  # cumulative: the last one holds every token
        completion = final.outputs[0]
        if completion.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM ended request {request_id!r} with finish reason {completion.finish_reason!r}")
        return GenerationOutput(list(completion.token_ids), completion_log_probs(completion), completion.finish_reason)

    async def update_weights(self, weights: Weights) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest, WeightTransferUpdateRequest

        if not self.transfer_ready:
            await self.engine.init_weight_transfer_engine(WeightTransferInitRequest(init_info={"packed": False}))
            self.transfer_ready = True
        if self.asleep:
            await self.engine.wake_up(tags=["weights"])
        shared = [(name, self._shareable(tensor)) for name, tensor in weights]
        await self.engine.start_weight_update()
        await self.engine.update_weights(WeightTransferUpdateRequest(update_info=ipc_update_info(shared)))
        await self.engine.finish_weight_update()
        del shared
        if torch.cuda.is_available():
            torch.cuda.ipc_collect()  # the engine's references to the shared copies are gone
        if self.asleep:  # after the load, which held the shared copies
            await self.engine.wake_up(tags=["kv_cache"])
        await self.engine.reset_prefix_cache()  # its keys/values came from the old weights
        self.asleep, self.loaded = False, True

    async def release(self) -> None:
        if not self.asleep:
            await self.engine.sleep(level=2)
            self.asleep, self.loaded = True, False

    async def resume(self) -> None:
        if self.asleep:
            raise RuntimeError("the vLLM engine discards its weights on release (level-2 sleep): "
                               "update_weights brings it back")

    def _shareable(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor in the engine's dtype, contiguous and, where there is a GPU, on it (CUDA IPC
        shares device memory; an offloaded parameter arrives on the CPU)."""
        target = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else tensor.device
        return tensor.detach().to(device=target, dtype=self.dtype).contiguous()
