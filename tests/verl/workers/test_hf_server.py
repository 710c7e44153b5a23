"""HFServer (continuous batching on the tiny fp32 model) against HFRollout and plain forwards.

A forward pre-hook on the engine's model records the rows of every forward and can hold the first
one, so that the tests decide which requests share the batch.
"""
from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl.trainer.config import rollout_config
from verl.workers.rollout.base import build_prompt_batch, response_token_lists
from verl.workers.rollout.hf_rollout import HFRollout
from verl.workers.rollout.hf_server import HFServer
from verl.workers.rollout.server import SamplingSettings

CONFIG = rollout_config(response_length=16)
TEXTS = ["Who was born first?", "<search> capital of France </search> Paris", "The",
         "Answer the given question. You must conduct reasoning"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tokenizer):
    """HFRollout on its own copy of the model, one prompt per call, no cache."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rollout = HFRollout(model, tokenizer, rollout_config(response_length=16, enable_prefix_caching=False))

    def generate(prompt: list[int], **meta) -> tuple[list[int], list[float]]:
        batch = build_prompt_batch([prompt], tokenizer.pad_token_id)
        batch.meta_info = {"do_sample": False, **meta}
        out = rollout.generate_sequences(batch)
        tokens = response_token_lists(out)[0]
        return tokens, out.batch["rollout_log_probs"][0, :len(tokens)].tolist()

    return generate


class Forwards:
    """Records the rows of each forward of `module`; `hold()` stops the next forward until `release()`."""

    def __init__(self, module: torch.nn.Module):
        self.rows: list[int] = []
        self.entered, self.gate = threading.Event(), threading.Event()
        self.gate.set()
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.rows.append(kwargs["input_ids"].shape[0])
        self.entered.set()
        self.gate.wait()

    def hold(self) -> None:
        self.entered.clear()
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def server(tiny_model_dir, tokenizer):
    server = HFServer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, max_num_seqs=8)
    server.forwards = Forwards(server.module)
    yield server
    server.forwards.release()
    server.close()


def greedy(max_new_tokens: int, **values) -> SamplingSettings:
    return SamplingSettings.from_config(CONFIG, max_new_tokens=max_new_tokens, do_sample=False, **values)


async def first_alone_then_together(server, requests: list[tuple[str, list[int], SamplingSettings]]):
    """The outputs of `requests`: the first one's prefill runs alone, and its first decode step (the
    engine steps right after admitting); all the others wait meanwhile and join the batch together."""
    server.forwards.hold()
    first = asyncio.ensure_future(server.generate(*requests[0]))
    while not server.forwards.entered.is_set():
        await asyncio.sleep(0.001)
    rest = [asyncio.ensure_future(server.generate(*request)) for request in requests[1:]]
    await asyncio.sleep(0)  # each task submits its request before it awaits the result
    server.forwards.release()
    return await asyncio.gather(first, *rest)


def test_concurrent_greedy_requests_equal_hf_rollout_one_by_one(server, tokenizer, reference):
    prompts = [tokenizer.encode(t) for t in TEXTS]
    lengths = [3, 7, 12, 5]
    outputs = asyncio.run(first_alone_then_together(
        server, [(f"r{i}", p, greedy(n)) for i, (p, n) in enumerate(zip(prompts, lengths))]))

    for prompt, n, output in zip(prompts, lengths, outputs):
        tokens, log_probs = reference(prompt, max_new_tokens=n)
        assert output.token_ids == tokens
        assert output.log_probs == pytest.approx(log_probs, abs=1e-4)
        assert output.finish_reason == ("stop" if tokenizer.eos_token_id in tokens else "length")
    rows = server.forwards.rows
    assert rows[:4] == [1, 1, 3, 4]  # r0's prefill and first step, the others' prefill, a step of all four
    # every decode step feeds exactly the rows still generating: each row's tokens after its first
    assert rows[1] + sum(rows[3:]) == sum(len(o.token_ids) - 1 for o in outputs)


def test_a_finished_row_leaves_while_the_others_decode(server, tokenizer):
    prompts = [tokenizer.encode(t) for t in TEXTS[:3]]
    _, *outputs = asyncio.run(first_alone_then_together(  # w's one token comes from its prefill: no step
        server, [("w", prompts[0], greedy(1)), ("a", prompts[0], greedy(2)), ("b", prompts[1], greedy(5)),
                 ("c", prompts[2], greedy(9))]))

    assert [len(o.token_ids) for o in outputs] == [2, 5, 9]
    assert [o.finish_reason for o in outputs] == ["length"] * 3
    # w; the prefill of a, b and c; then a leaves after its 2nd token, b after its 5th, c decodes alone
    assert server.forwards.rows == [1, 3, 3, 2, 2, 2, 1, 1, 1, 1]
    assert server.metrics()["server/decoded_rows"] == 1 + 4 + 8


def test_a_trajectory_s_next_turn_encodes_only_its_new_tokens(server, tokenizer, reference):
    prompt = tokenizer.encode(TEXTS[0])
    observation = tokenizer.encode(" <information> Paris is the capital. </information>")

    async def turns():
        first = await server.generate("t", prompt, greedy(6))
        before = server.prefill_tokens
        context = prompt + first.token_ids + observation
        second = await server.generate("t", context, greedy(8))
        return first, context, second, server.prefill_tokens - before

    first, context, second, encoded = asyncio.run(turns())
    # the cache holds the prompt and the generated tokens fed back (all but the last)
    assert encoded == 1 + len(observation)
    tokens, log_probs = reference(context, max_new_tokens=8)  # the whole context encoded again
    assert second.token_ids == tokens
    assert second.log_probs == pytest.approx(log_probs, abs=1e-4)

    before = server.prefill_tokens
    other = tokenizer.encode(TEXTS[2])  # not an extension: encoded whole
    asyncio.run(server.generate("t", other, greedy(2)))
    assert server.prefill_tokens - before == len(other)


def test_stop_strings_end_generation_as_in_hf_rollout(server, tokenizer, reference):
    prompt = tokenizer.encode(TEXTS[1])
    free, _ = reference(prompt, max_new_tokens=16)
    text = tokenizer.decode(free)
    stop = text[len(text) // 2: len(text) // 2 + 2]  # the random model's own text, mid-response
    assert stop.strip(), f"degenerate stop string from {text!r}"

    output = asyncio.run(server.generate("s", prompt, greedy(16, stop=["</never>", stop])))
    tokens, _ = reference(prompt, max_new_tokens=16, stop=["</never>", stop])
    assert output.token_ids == tokens
    assert len(tokens) < len(free) and output.finish_reason == "stop"
    assert stop in tokenizer.decode(tokens) and stop not in tokenizer.decode(tokens[:-1])


def test_seeded_sampling_is_reproducible_and_scored_without_truncation(server, tokenizer, tiny_model_dir):
    prompt = tokenizer.encode(TEXTS[3])

    def sampled(seed: int) -> SamplingSettings:
        return SamplingSettings.from_config(CONFIG, max_new_tokens=12, do_sample=True, temperature=0.7, top_k=20,
                                            top_p=0.9, seed=seed)

    async def together():
        return await asyncio.gather(server.generate("x", prompt, sampled(7)), server.generate("y", prompt, sampled(7)),
                                    server.generate("z", prompt, sampled(8)))

    same, again, other = asyncio.run(together())
    # the same tokens; their log-probs are rows of one batched forward, whose float sums can depend on
    # the row's place in the batch (5e-7 apart on a CPU without AVX-512)
    assert same.token_ids == again.token_ids and same.log_probs == pytest.approx(again.log_probs, abs=1e-5)
    assert other.token_ids != same.token_ids

    # each log-prob is of the whole tempered distribution, as the trainer computes it
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + same.token_ids])).logits[0, len(prompt) - 1:-1]
    expected = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, torch.tensor(same.token_ids).unsqueeze(-1))
    assert same.log_probs == pytest.approx(expected.squeeze(-1).tolist(), abs=1e-4)


def test_new_weights_drop_cached_turns_and_release_blocks_generation(server, tokenizer, tiny_model_dir):
    prompt = tokenizer.encode(TEXTS[0])
    perturbed = {k: v * 1.5 for k, v in server.module.state_dict().items()}  # tied weights stay tied

    async def run():
        first = await server.generate("t", prompt, greedy(4))
        await server.update_weights(perturbed.items())
        before = server.prefill_tokens
        context = prompt + first.token_ids
        await server.generate("t", context, greedy(4))
        encoded = server.prefill_tokens - before
        await server.release()
        with pytest.raises(RuntimeError, match="released"):
            await server.generate("t", context, greedy(4))
        await server.resume()
        return context, encoded, await server.generate("u", context, greedy(4))

    context, encoded, output = asyncio.run(run())
    assert encoded == len(context)  # the old weights' keys/values were dropped
    assert all(torch.equal(server.module.state_dict()[k], v) for k, v in perturbed.items())
    assert len(output.token_ids) == 4


def test_a_threaded_worker_serves_concurrent_requests_as_it_serves_them_one_by_one(ray_local, tiny_model_dir,
                                                                                    tokenizer):
    """The actor worker hosting an HFServer in a one-rank group whose actor runs 9 calls at once."""
    import ray

    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
    from verl.trainer.config import schema_node
    from verl.workers.fsdp_workers import ActorRolloutRefWorker

    config = schema_node("actor_rollout_ref", {
        "model": {"path": str(tiny_model_dir)},
        "actor": {"ppo_mini_batch_size": 1, "ppo_micro_batch_size_per_gpu": 1},
        "rollout": {"mode": "async", "response_length": 10, "max_num_seqs": 8, "dtype": "float32"},
    })
    group = RayWorkerGroup(RayResourcePool([1], use_gpu=False),
                           RayClassWithInitArgs(ActorRolloutRefWorker, config=config, role="actor_rollout"),
                           max_concurrency=9)
    group.init_model()
    worker = group.workers[0]
    requests = [(f"q{i}", tokenizer.encode(TEXTS[i % 4] + " " * (i // 4)), greedy(4 + i)) for i in range(8)]

    together = ray.get([worker.server_generate.remote(*request) for request in requests])
    assert group.server_metrics()[0]["server/max_batch_rows"] > 1  # they shared decode steps
    one_by_one = [ray.get(worker.server_generate.remote(*request)) for request in requests]

    for output, alone, (_, _, params) in zip(together, one_by_one, requests):
        assert output.token_ids == alone.token_ids and len(output.token_ids) <= params.max_new_tokens
        assert output.log_probs == pytest.approx(alone.log_probs, abs=1e-4)
