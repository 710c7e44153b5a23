"""ScriptedPolicy: a `generate` function that replays fixed texts, turn by turn, per question, and
ScriptedServer: the same behind the rollout servers' interface (per-trajectory requests).

For tests, benchmarks and debugging the agent loop without a model: the texts are what a policy
would write, so the rollout, masks, retrieval traffic and rewards are exercised for real.

    policy = ScriptedPolicy(tokenizer, {"capital of France": ["<search> Paris </search>", "<answer> Paris </answer>"]})
    manager = GenerationManager(policy, tokenizer, retriever, config)
    server = ScriptedServer(tokenizer, scripts)  # await server.generate(request_id, prompt_ids, params)

A row's script is the one whose key occurs in its context; its turn is the number of the
script's texts already found, in order, after that key (so repeated rows and identical turns
work without any hidden counter).
"""
from __future__ import annotations

import asyncio

import torch

from verl.protocol import DataProto
from verl.workers.rollout.base import assemble_output
from verl.workers.rollout.server import GenerationOutput, SamplingSettings


class ScriptedPolicy:
    def __init__(self, tokenizer, scripts: dict[str, list[str]]):
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.calls: list[tuple[list[str], dict]] = []  # (decoded contexts, meta_info) per call

    def __call__(self, prompts: DataProto) -> DataProto:
        ids, mask = prompts.batch["input_ids"], prompts.batch["attention_mask"].bool()
        contexts = [self.tokenizer.decode(r[m].tolist(), skip_special_tokens=False) for r, m in zip(ids, mask)]
        self.calls.append((contexts, dict(prompts.meta_info)))
        width = int(prompts.meta_info["max_new_tokens"])
        responses = torch.full((len(contexts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        response_mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for i, context in enumerate(contexts):
            tokens = self.turn_tokens(context, width)
            responses[i, : len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
            response_mask[i, : len(tokens)] = 1
        output = assemble_output(prompts, responses, response_mask)
        # a script's next text is certain: probability 1, log-prob 0 (the rollout contract's key)
        output.batch["rollout_log_probs"] = torch.zeros(responses.shape, dtype=torch.float32)
        return output

    def turn_tokens(self, context: str, width: int) -> list[int]:
        """The next text's token ids, at most `width` of them (a turn cut by max_new_tokens)."""
        return self.tokenizer.encode(self.next_text(context), add_special_tokens=False)[:width]

    def next_text(self, context: str) -> str:
        keys = [k for k in self.scripts if k in context]
        if len(keys) != 1:
            raise KeyError(f"context matches {len(keys)} script keys {keys} (need exactly 1): ...{context[-200:]!r}")
        texts = self.scripts[keys[0]]
        position = context.index(keys[0]) + len(keys[0])
        turn = 0
        while turn < len(texts):
            found = context.find(texts[turn], position)
            if found == -1:
                break
            position, turn = found + len(texts[turn]), turn + 1
        if turn == len(texts):
            raise IndexError(f"script {keys[0]!r} has only {len(texts)} turns")
        return texts[turn]


class ScriptedServer(ScriptedPolicy):
    """The scripts behind the rollout servers' interface: each request is answered with its context's
    next text (log-prob 0 per token), after `delay` seconds. `requests` holds (request id, decoded
    context, settings) per request."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]], delay: float = 0.0):
        super().__init__(tokenizer, scripts)
        self.delay = delay
        self.requests: list[tuple[str, str, SamplingSettings]] = []

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingSettings) -> GenerationOutput:
        context = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        self.requests.append((request_id, context, params))
        await asyncio.sleep(self.delay)
        tokens = self.turn_tokens(context, params.max_new_tokens)
        eos = self.tokenizer.eos_token_id
        stopped = eos in tokens or any(s in self.tokenizer.decode(tokens) for s in params.stop)
        return GenerationOutput(tokens, [0.0] * len(tokens), "stop" if stopped else "length")
