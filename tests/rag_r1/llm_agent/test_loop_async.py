"""SearchAgentLoop in async mode (rollout servers, per-trajectory requests, the async retrieval client)
against sync mode, and with veRL's search tool config, against the real BM25 server on loopback."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rag_r1.llm_agent.loop import SearchAgentLoop
from rag_r1.llm_agent.prompts import user_content
from rag_r1.llm_agent.scripted import ScriptedPolicy, ScriptedServer
from test_loop import DOC_PEN, DOC_TOWER, Q_PEN, Q_TOWER, QUESTIONS, make_config, prompt_batch
from tool_chat_template import tool_tokenizer, write_tool_config
from verl.trainer.config import schema_node
from verl.trainer.ppo.rollout_servers import ServerPool

TRAFFIC = {"env/retrieval_requests", "env/duplicate_query_ratio"}  # per turn in sync mode, per trajectory in async


def scripted_pool(server: ScriptedServer, config, pad_token_id: int) -> ServerPool:
    wakes = []
    pool = ServerPool([server.generate], lambda: wakes.append(1), config.actor_rollout_ref.rollout, pad_token_id)
    pool.wakes = wakes
    return pool


def test_async_mode_gives_the_sync_batch_with_one_request_per_searching_trajectory(tokenizer, retrieval_server):
    config = make_config(retrieval_server.url)
    prompts, _ = prompt_batch(tokenizer, list(QUESTIONS), "multi")
    sync = SearchAgentLoop(config, tokenizer, ScriptedPolicy(tokenizer, QUESTIONS)).run(prompts)
    pool = scripted_pool(ScriptedServer(tokenizer, QUESTIONS), config, tokenizer.pad_token_id)
    loop = SearchAgentLoop(config, tokenizer, pool.generate_batch, servers=pool)
    before = retrieval_server.stats()
    out = loop.run(prompts)
    after = retrieval_server.stats()

    for key in sync.batch.keys():
        assert torch.equal(out.batch[key], sync.batch[key]), key
    for key in ("turns", "search_calls", "num_queries", "valid_actions", "answered", "queries", "retrieved_ids"):
        assert list(out.non_tensor_batch[key]) == list(sync.non_tensor_batch[key]), key
    mine, theirs = out.meta_info["metrics"], sync.meta_info["metrics"]
    same = {k for k in theirs if not k.startswith("timing_s/")} - TRAFFIC
    assert {k: mine[k] for k in same} == {k: theirs[k] for k in same}
    # A and C search in turn 1, B and C in turn 2: four requests of their own queries (sync: two); B asks
    # one query twice: 6 distinct of 7
    assert after["requests"] - before["requests"] == 4 and mine["env/retrieval_requests"] == 4
    assert after["queries"] - before["queries"] == 6 and mine["env/duplicate_query_ratio"] == pytest.approx(1 - 6 / 7)


def tool_config(tmp_path, url: str, **extra):
    return schema_node("", {
        "data": {"max_prompt_length": 2048, "max_start_length": 1024, "max_response_length": 256},
        "agent": {"mode": "multi", "max_turns": 2, "max_obs_length": 400, **extra},
        "actor_rollout_ref": {"rollout": {"mode": "async", "do_sample": False, "multi_turn": {
            "tool_config_path": write_tool_config(tmp_path / "search_tool_config.yaml", url)}}},
    })


def tool_batch(tokenizer, questions: list[str]):
    """A veRL Search-R1-like batch: the data set's ids (rendered without tools) and the chat messages."""
    messages = [[{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": f"Answer with <answer> ... </answer>. Question: {q}"}]
                for q in questions]
    token_lists = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
                   for m in messages]
    from verl.workers.rollout.base import build_prompt_batch

    batch = build_prompt_batch(token_lists, tokenizer.pad_token_id)
    chats = np.empty(len(messages), dtype=object)  # one list of messages per row
    for row, chat in enumerate(messages):
        chats[row] = chat
    batch.non_tensor_batch["raw_prompt"] = chats
    batch.non_tensor_batch["data_source"] = np.array(["searchR1_nq"] * len(questions), dtype=object)
    return batch, messages


def call(*queries: str) -> str:
    listed = ", ".join(f'"{q}"' for q in queries)
    return f'<tool_call>\n{{"name": "search", "arguments": {{"query_list": [{listed}]}}}}\n</tool_call><|im_end|>'


def test_verls_search_tool_config_runs_the_tool_call_format(tmp_path, retrieval_server):
    tokenizer = tool_tokenizer()
    scripts = {"found penicillin": [call(Q_TOWER, Q_PEN), "<answer> Alexander Fleming </answer><|im_end|>"],
               "keeps talking": ['<tool_call>{"name": "browse"}</tool_call><|im_end|>', "no tool<|im_end|>",
                                 "<answer> x </answer><|im_end|>"]}
    config = tool_config(tmp_path, retrieval_server.url, topk=1)
    pool = scripted_pool(ScriptedServer(tokenizer, scripts), config, tokenizer.pad_token_id)
    loop = SearchAgentLoop(config, tokenizer, pool.generate_batch, servers=pool)  # no retriever.url: the tool's
    prompts, messages = tool_batch(tokenizer, ["Who found penicillin", "Who keeps talking"])
    before = retrieval_server.stats()
    out = loop.run(prompts)
    assert retrieval_server.stats()["requests"] - before["requests"] == 1

    schema = loop.tool.schema
    for i, chat in enumerate(messages):  # the prompt now shows the tool, as veRL's tool agent renders it
        rendered = tokenizer.apply_chat_template(chat, tools=[schema], add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
        assert out.batch["prompts"][i, out.batch["prompts"][i] != tokenizer.pad_token_id].tolist() == rendered
        assert '"name": "search"' in tokenizer.decode(rendered)
    result = '{"query": ["%s", "%s"], "documents": ["%s", "%s"]}' % (Q_TOWER, Q_PEN, DOC_TOWER, DOC_PEN)
    after_call = "\n<|im_start|>user\n<tool_response>\n"
    close = "\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    lengths = out.batch["response_mask"].sum(-1)
    texts = [tokenizer.decode(out.batch["responses"][i, :int(lengths[i])]) for i in range(2)]
    assert texts[0] == scripts["found penicillin"][0] + after_call + result + close + scripts["found penicillin"][1]
    assert texts[1] == (scripts["keeps talking"][0] + after_call + "Error: unknown tool 'browse'; the only tool is "
                        "'search'. No search was run for this call." + close + scripts["keeps talking"][1] +
                        "\n<|im_start|>user\nThat step called no tool and gave no final answer. Call the search tool, "
                        "or give the final answer between the opening and closing answer tags.<|im_end|>\n"
                        "<|im_start|>assistant\n" + scripts["keeps talking"][2])
    nt = out.non_tensor_batch
    assert list(nt["turns"]) == [2, 3] and list(nt["search_calls"]) == [1, 0] and list(nt["valid_actions"]) == [2, 1]
    assert nt["retrieved_ids"][0] == [["p0", "p1"]] and list(nt["answered"]) == [True, True]


def test_the_tool_call_format_needs_the_chat_messages_and_room_for_the_tools(tmp_path):
    tokenizer = tool_tokenizer()
    config = tool_config(tmp_path, "http://127.0.0.1:1/retrieve")
    pool = scripted_pool(ScriptedServer(tokenizer, {}), config, tokenizer.pad_token_id)
    loop = SearchAgentLoop(config, tokenizer, pool.generate_batch, servers=pool)
    prompts, _ = tool_batch(tokenizer, ["Who found penicillin"])
    without_chat = prompts.select(non_tensor_batch_keys=["data_source"])
    with pytest.raises(ValueError, match=r"needs them as `raw_prompt` \(set data.return_raw_chat=true\)"):
        loop.run(without_chat)
    config.data.max_start_length = 64
    short = SearchAgentLoop(config, tokenizer, pool.generate_batch, servers=pool)
    with pytest.raises(ValueError, match=r"tokens > data.max_start_length=64: raise data.max_start_length"):
        short.run(prompts)
    # data built for RAG-R1's tags with the tool format chosen
    tagged, _ = tool_batch(tokenizer, ["Who found penicillin"])
    tagged.non_tensor_batch["raw_prompt"][0][1]["content"] = user_content("Who found penicillin", "multi")
    with pytest.raises(ValueError, match="carry RAG-R1's <search> tag instruction, but actor_rollout_ref.rollout."
                                         "multi_turn.tool_config_path asks for tool calls"):
        loop.run(tagged)


def test_the_tool_config_stands_for_retriever_and_agent_keys(tmp_path):
    tokenizer = tool_tokenizer()
    config = tool_config(tmp_path, "http://127.0.0.1:1/retrieve", topk=4)
    config.retriever = {"url": "http://127.0.0.1:2/retrieve"}
    with pytest.raises(ValueError, match=r"retriever.url=http://127.0.0.1:2/retrieve and actor_rollout_ref.rollout."
                                         r"multi_turn.tool_config_path's http://127.0.0.1:1/retrieve disagree"):
        SearchAgentLoop(config, tokenizer, lambda batch: batch)
    path = config.actor_rollout_ref.rollout.multi_turn.tool_config_path
    with open(path) as f:
        text = f.read().replace('"default_timeout": 30', '"default_timeout": 30, "topk": 2')
    with open(path, "w") as f:
        f.write(text)
    config.retriever = {}
    with pytest.raises(ValueError, match="agent.topk=4 and actor_rollout_ref.rollout.multi_turn.tool_config_path's "
                                         "topk=2 disagree"):
        SearchAgentLoop(config, tokenizer, lambda batch: batch)
    del config.agent["topk"]
    loop = SearchAgentLoop(config, tokenizer, lambda batch: batch)
    assert loop.agent.topk == 2 and loop.manager.retriever.urls == ["http://127.0.0.1:1/retrieve"]
    assert loop.manager.retriever.timeout == 30
