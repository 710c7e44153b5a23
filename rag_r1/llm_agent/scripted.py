"""ScriptedPolicy: a `generate` function that replays fixed texts, turn by turn, per question.

For tests, benchmarks and debugging the agent loop without a model: the texts are what a policy
would write, so the rollout, masks, retrieval traffic and rewards are exercised for real.

    policy = ScriptedPolicy(tokenizer, {"capital of France": ["<search> Paris </search>", "<answer> Paris </answer>"]})
    manager = GenerationManager(policy, tokenizer, retriever, config)

A row's script is the one whose key occurs in its context; its turn is the number of the
script's texts already found, in order, after that key (so repeated rows and identical turns
work without any hidden counter).
"""
from __future__ import annotations

import torch

from verl.protocol import DataProto
from verl.workers.rollout.base import assemble_output


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
            tokens = self.tokenizer.encode(self.next_text(context), add_special_tokens=False)[:width]
            responses[i, : len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
            response_mask[i, : len(tokens)] = 1
        output = assemble_output(prompts, responses, response_mask)
        # a script's next text is certain: probability 1, log-prob 0 (the rollout contract's key)
        output.batch["rollout_log_probs"] = torch.zeros(responses.shape, dtype=torch.float32)
        return output

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
