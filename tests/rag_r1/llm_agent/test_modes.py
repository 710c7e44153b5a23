from __future__ import annotations

from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.modes import build_mode, format_multi, format_single
from rag_r1.llm_agent.prompts import format_question, instruction, invalid_action_note, user_content

HITS = [[{"id": "a", "contents": '"Zürich"\nA city in Switzerland.', "score": 2.0},
         {"id": "b", "contents": "no title line", "score": 1.0}],
        [{"id": "c", "contents": '"Tokyo"\n東京 is the capital of "Japan".', "score": 1.5}]]


def mode(**kw):
    return build_mode(AgentConfig(max_prompt_length=64, max_start_length=32, max_response_length=16, **kw))


def test_single_lines():
    assert format_single(["q"], HITS[:1]) == "Doc 1(Title: Zürich) A city in Switzerland.\nDoc 2(Title: ) no title line"


def test_multi_json_one_entry_per_query_unicode_kept():
    assert format_multi(["q1", "q2"], HITS) == (
        '{"query": ["q1", "q2"], "documents": ["Doc 1(Title: Zürich) A city in Switzerland.\\n'
        'Doc 2(Title: ) no title line", "Doc 1(Title: Tokyo) 東京 is the capital of \\"Japan\\"."]}')


def test_modes_differ_in_parser_formatter_and_note():
    single, multi = mode(mode="single"), mode(mode="multi", max_queries=2, query_delimiter=";")
    assert single.queries_of(" Paris, Texas ") == ["Paris, Texas"]
    assert single.queries_of("  ") == []
    assert multi.queries_of("a; b;; c") == ["a", "b"]
    assert single.format_observation is format_single and multi.format_observation is format_multi
    assert single.invalid_note == invalid_action_note("single") != multi.invalid_note


def test_prompt_text():
    assert format_question("  Who wrote Hamlet ") == "Who wrote Hamlet?"
    assert format_question("Who?") == "Who?"
    assert user_content("who wrote hamlet", "multi") == instruction("multi") + "who wrote hamlet?"
    assert "up to two short queries, separated by semicolons" in instruction("multi", 2, ";")
