"""The per-trajectory rollout (AsyncSearchAgent) against the batch one (GenerationManager): the same
turn rules give the same trajectories in both tool formats; trajectories advance on their own."""
from __future__ import annotations

import asyncio

import pytest

from rag_r1.llm_agent.async_agent import AsyncSearchAgent, BusyClock, ThreadedRetriever, request_seed
from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.generation import GenerationManager, TurnRules
from rag_r1.llm_agent.modes import mode_of
from rag_r1.llm_agent.scripted import ScriptedPolicy, ScriptedServer
from rag_r1.llm_agent.tool_formats import TagFormat, ToolCallFormat, load_search_tool
from test_generation import FakeRetriever
from tool_chat_template import tool_tokenizer, write_tool_config
from verl.workers.rollout.server import SamplingSettings

ROW_KEYS = ("response", "info_mask", "log_probs", "turns", "search_calls", "valid_actions", "answered",
            "obs_truncated", "queries", "retrieved_ids", "done")


def tool_call(*queries: str) -> str:
    listed = ", ".join(f'"{q}"' for q in queries)
    return f'<tool_call>{{"name": "search", "arguments": {{"query_list": [{listed}]}}}}</tool_call><|im_end|>'


# Per question: a two-query search then an answer; no action, a search, an answer; an empty or
# malformed search, then searches until the final turn (whose search is not run).
SCRIPTS = {
    "tags": {"Q1": ["<search> fox, dog </search>", "<answer> fox </answer>"],
             "Q2": ["I think", "<search> cat </search>", "<answer> cat </answer>"],
             "Q3": ["<search> , </search>", "<search> fox, owl </search>", "<search> owl </search>"]},
    "tools": {"Q1": [tool_call("fox", "dog"), "<answer> fox </answer><|im_end|>"],
              "Q2": ["I think<|im_end|>", tool_call("cat"), "<answer> cat </answer><|im_end|>"],
              "Q3": ['<tool_call>{"name": "search", "arguments": {}}</tool_call><|im_end|>', tool_call("fox", "owl"),
                     tool_call("owl")]},
}


def agent_config(**overrides) -> AgentConfig:
    values = dict(max_prompt_length=4096, max_start_length=2048, max_response_length=512, topk=2, max_turns=2,
                  max_obs_length=200, unseen_passages=True)
    return AgentConfig(**{**values, **overrides})


def setup(fmt: str, tmp_path, config: AgentConfig):
    """(tokenizer, tool format, prompts) of one format."""
    if fmt == "tags":
        from tiny_model import make_tokenizer

        tokenizer = make_tokenizer()
        return tokenizer, TagFormat(tokenizer, mode_of(config), config.max_obs_length), [
            tokenizer.encode(f"{q} ", add_special_tokens=False) for q in SCRIPTS[fmt]]
    tokenizer = tool_tokenizer()
    tool = load_search_tool(write_tool_config(tmp_path / "tools.yaml"))
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tools=[tool.schema],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
               for q in SCRIPTS[fmt]]
    return tokenizer, ToolCallFormat(tokenizer, mode_of(config), config.max_obs_length, tool), prompts


def greedy(max_new_tokens: int, stop=(), seed=None) -> SamplingSettings:
    return SamplingSettings(max_new_tokens, do_sample=False, temperature=1.0, top_p=1.0, top_k=-1, stop=stop,
                            seed=seed)


@pytest.mark.parametrize("fmt", ["tags", "tools"])
def test_the_per_trajectory_rollout_makes_the_batch_rollouts_trajectories(fmt, tmp_path):
    config = agent_config()
    tokenizer, tool_format, prompts = setup(fmt, tmp_path, config)
    batch_retriever, own_retriever = FakeRetriever(), FakeRetriever()
    manager = GenerationManager(ScriptedPolicy(tokenizer, SCRIPTS[fmt]), tokenizer, batch_retriever, config,
                                tool_format)
    batch_rows, batch_stats = manager.run(prompts, {"do_sample": False})
    server = ScriptedServer(tokenizer, SCRIPTS[fmt])
    agent = AsyncSearchAgent(server, ThreadedRetriever(own_retriever), TurnRules(tokenizer, config, tool_format))
    rows, stats = asyncio.run(agent.run(prompts, greedy(config.max_response_length, tool_format.stop)))

    for mine, theirs in zip(rows, batch_rows, strict=True):
        assert {k: getattr(mine, k) for k in ROW_KEYS} == {k: getattr(theirs, k) for k in ROW_KEYS}
    assert [r.turns for r in rows] == [2, 3, 3] and [r.search_calls for r in rows] == [1, 1, 1]
    assert [r.valid_actions for r in rows] == [2, 2, 2] and [r.answered for r in rows] == [True, True, False]
    assert rows[2].queries == [["fox", "owl"]]
    # unseen passages are per trajectory: Q3 is shown the "fox" passages Q1 was shown
    assert rows[0].retrieved_ids == [["fox#0", "fox#1", "dog#0", "dog#1"]]
    assert rows[2].retrieved_ids == [["fox#0", "fox#1", "owl#0", "owl#1"]]
    # the traffic differs by design: one request per turn for the batch, one per searching row and turn here
    assert batch_stats.requests_per_turn == [1, 1, 0] and batch_stats.retrieval_requests == 2
    assert stats.requests_per_turn == [1, 2] and stats.retrieval_requests == 3
    assert sorted(q for q, _ in own_retriever.calls) == sorted([["fox", "dog"], ["cat"], ["fox", "owl"]])
    # every turn of a trajectory went under the trajectory's request id, one id per trajectory
    ids = [request_id for request_id, _, _ in server.requests]
    assert len(set(ids)) == 3 and sorted(ids.count(i) for i in set(ids)) == [2, 3, 3]


def test_the_tool_formats_observation_follows_the_policys_eos_in_the_trajectory(tmp_path):
    config = agent_config()
    tokenizer, tool_format, prompts = setup("tools", tmp_path, config)
    agent = AsyncSearchAgent(ScriptedServer(tokenizer, SCRIPTS["tools"]), ThreadedRetriever(FakeRetriever()),
                             TurnRules(tokenizer, config, tool_format))
    rows, _ = asyncio.run(agent.run(prompts, greedy(512)))
    q3 = rows[2]
    text = tokenizer.decode(q3.response)
    malformed = '<tool_call>{"name": "search", "arguments": {}}</tool_call><|im_end|>'
    assert text.startswith(malformed + '\n<|im_start|>user\n<tool_response>\nError: "arguments" must hold '
                           '"query_list", a list of query strings. No search was run for this call.\n'
                           '</tool_response><|im_end|>\n<|im_start|>assistant\n' + tool_call("fox", "owl") +
                           "\n<|im_start|>user\n<tool_response>\n{\"query\": [\"fox\", \"owl\"]")
    # the policy's tokens (its eos included) are the ones it generated; everything else is masked
    generated = [t for t, m in zip(q3.response, q3.info_mask) if not m]
    assert tokenizer.decode(generated) == malformed + tool_call("fox", "owl") + tool_call("owl")
    assert q3.response.count(tokenizer.eos_token_id) == 3 + 2  # three own, two closing the tool messages


class HeldRetriever:
    """Holds the search for "slow" until the "fast" trajectory's second search was answered."""

    def __init__(self):
        self.fast_done = asyncio.Event()
        self.order: list[str] = []

    async def retrieve(self, queries, topk):
        self.order.append(f"{queries[0]} asked")
        if queries == ["slow"]:
            await asyncio.wait_for(self.fast_done.wait(), timeout=10)
        if queries == ["fast two"]:
            self.fast_done.set()
        self.order.append(f"{queries[0]} answered")
        return [[{"id": f"{q}#0", "contents": f'"{q}"\ntext'}] for q in queries]


def test_a_trajectory_waiting_for_retrieval_holds_up_no_other(tokenizer):
    scripts = {"Slow": ["<search> slow </search>", "<answer> s </answer>"],
               "Fast": ["<search> fast one </search>", "<search> fast two </search>", "<answer> f </answer>"]}
    config = agent_config(max_turns=3)
    retriever = HeldRetriever()
    agent = AsyncSearchAgent(ScriptedServer(tokenizer, scripts), retriever, TurnRules(tokenizer, config))
    prompts = [tokenizer.encode(f"{q} ", add_special_tokens=False) for q in scripts]
    rows, stats = asyncio.run(agent.run(prompts, greedy(64, TagFormat.stop)))
    # "fast" generated, searched and generated again twice while "slow" waited for its passages
    assert retriever.order == ["slow asked", "fast one asked", "fast one answered", "fast two asked",
                               "fast two answered", "slow answered"]
    assert [r.answered for r in rows] == [True, True] and [r.turns for r in rows] == [2, 3]
    assert stats.generate_s + stats.retrieve_s <= stats.total_s + 1e-6


def test_a_failed_retrieval_stops_the_rollout_and_is_raised(tokenizer):
    scripts = {"A": ["<search> x </search>", "<answer> a </answer>"], "B": ["<answer> b </answer>"]}
    agent = AsyncSearchAgent(ScriptedServer(tokenizer, scripts), ThreadedRetriever(FakeRetriever(RuntimeError("down"))),
                             TurnRules(tokenizer, agent_config()))
    prompts = [tokenizer.encode(f"{q} ", add_special_tokens=False) for q in scripts]
    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(agent.run(prompts, greedy(64)))
    assert [str(e) for e in caught.value.exceptions] == ["down"]


def test_sampled_turns_get_seeds_of_their_own(tokenizer):
    scripts = {"A": ["I think", "<answer> a </answer>"], "B": ["<answer> b </answer>"]}
    server = ScriptedServer(tokenizer, scripts)
    agent = AsyncSearchAgent(server, FakeRetriever(), TurnRules(tokenizer, agent_config()))
    sampled = SamplingSettings(64, do_sample=True, temperature=0.7, top_p=1.0, top_k=-1, seed=1234)
    prompts = [tokenizer.encode(f"{q} ", add_special_tokens=False) for q in scripts]
    asyncio.run(agent.run(prompts, sampled))
    seeds = sorted((context.split(" ")[0], params.seed) for _, context, params in server.requests)
    assert seeds == sorted([("A", request_seed(1234, 0, 0)), ("A", request_seed(1234, 0, 1)),
                            ("B", request_seed(1234, 1, 0))])
    assert request_seed(1234, 0, 1) == 1234 + 104729 and len({s for _, s in seeds}) == 3


def test_busy_clock_counts_overlap_as_generation(monkeypatch):
    import rag_r1.llm_agent.async_agent as module

    now = [0.0]
    monkeypatch.setattr(module.time, "perf_counter", lambda: now[0])
    clock = BusyClock()
    generating, retrieving = clock.busy("generate"), clock.busy("retrieve")
    now[0] = 1.0
    retrieving.__enter__()  # 0..1 idle
    now[0] = 3.0
    generating.__enter__()  # 1..3 retrieval alone
    now[0] = 4.0
    retrieving.__exit__(None, None, None)  # 3..4 both: generation
    now[0] = 6.0
    generating.__exit__(None, None, None)  # 4..6 generation
    assert dict(clock.spent) == {"retrieve": 2.0, "generate": 3.0}
