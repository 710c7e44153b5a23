from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.loop import RetrieverSettings, agent_config

DATA = {"max_prompt_length": 8192, "max_start_length": 2048, "max_response_length": 500}


def cfg(agent=None, retriever=None, data=None):
    return OmegaConf.create({"data": data or DATA, "agent": agent or {}, "retriever": retriever or {}})


def test_defaults_are_the_papers():
    a = agent_config(cfg())
    assert (a.mode, a.max_turns, a.max_queries, a.query_delimiter, a.max_obs_length, a.topk) == (
        "multi", 4, 3, ",", 1000, 3)
    assert a.unseen_passages is False  # a repeated query repeats its passages, as in the paper
    assert (a.max_prompt_length, a.max_start_length, a.max_response_length) == (8192, 2048, 500)


@pytest.mark.parametrize("agent, data, message", [
    ({"mode": "both"}, DATA, "agent.mode='both'"),
    ({"max_turns": 0}, DATA, "agent.max_turns=0"),
    ({"topk": "3"}, DATA, "agent.topk='3'"),
    ({"query_delimiter": ""}, DATA, "agent.query_delimiter=''"),
    ({"max_obs_length": 4}, DATA, "agent.max_obs_length=4"),
    ({"unseen_passages": "yes"}, DATA, "agent.unseen_passages='yes'"),
    ({"max_querys": 2}, DATA, "unknown key.*agent.max_querys"),
    ({}, {**DATA, "max_start_length": 9000}, "data.max_start_length=9000 exceeds data.max_prompt_length=8192"),
    ({}, {**DATA, "max_response_length": 0}, "data.max_response_length=0"),
])
def test_bad_values_name_their_key(agent, data, message):
    with pytest.raises(ValueError, match=message):
        agent_config(cfg(agent, data=data))


def test_retriever_topk_is_accepted_as_search_r1_spells_it():
    assert agent_config(cfg(retriever={"url": "u", "topk": 5})).topk == 5
    assert agent_config(cfg({"topk": 5}, retriever={"url": "u", "topk": 5})).topk == 5
    with pytest.raises(ValueError, match="agent.topk=2 and retriever.topk=5 disagree"):
        agent_config(cfg({"topk": 2}, retriever={"url": "u", "topk": 5}))


def test_verls_max_assistant_turns_is_the_agents_turns_plus_its_answer():
    def with_turns(agent, turns):
        config = cfg(agent)
        config.actor_rollout_ref = {"rollout": {"multi_turn": {"max_assistant_turns": turns}}}
        return agent_config(config)

    assert with_turns({}, 3).max_turns == 2  # two turns that may search, then the answer
    assert with_turns({"max_turns": 2}, 3).max_turns == 2
    assert with_turns({}, None).max_turns == AgentConfig(**DATA).max_turns
    with pytest.raises(ValueError, match=r"agent.max_turns=4 and actor_rollout_ref.rollout.multi_turn."
                                         r"max_assistant_turns=3 \(= agent.max_turns \+ 1\) disagree"):
        with_turns({"max_turns": 4}, 3)
    with pytest.raises(ValueError, match="max_assistant_turns=1: expected >= 2"):
        with_turns({}, 1)


def test_retriever_settings():
    s = RetrieverSettings.from_config({"url": ["http://a/retrieve", "http://b/retrieve"], "timeout": 5, "topk": 3})
    assert s == RetrieverSettings(url=["http://a/retrieve", "http://b/retrieve"], timeout=5, retries=3)
    with pytest.raises(ValueError, match="retriever.timeot"):
        RetrieverSettings.from_config({"url": "u", "timeot": 5})


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        AgentConfig(**DATA).mode = "single"
