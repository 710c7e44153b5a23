from __future__ import annotations

import pytest

from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.modes import build_mode, format_doc, format_multi, format_single, mode_of
from rag_r1.llm_agent.prompts import format_question, instruction, invalid_action_note, user_content

HITS = [[{"id": "a", "contents": '"Zürich"\nA city in Switzerland.', "score": 2.0},
         {"id": "b", "contents": "no title line", "score": 1.0}],
        [{"id": "c", "contents": '"Tokyo"\n東京 is the capital of "Japan".', "score": 1.5}]]


def mode(**kw):
    return mode_of(AgentConfig(max_prompt_length=64, max_start_length=32, max_response_length=16, **kw))


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
    assert single.instruction == instruction("single") and multi.instruction == instruction("multi", 2, ";")
    assert multi.user_content("who?") == instruction("multi", 2, ";") + "who?"


def test_what_is_written_into_a_search_reads_back_the_same():
    single, multi = mode(mode="single"), mode(mode="multi", max_queries=2, query_delimiter=";")
    assert (single.queries_per_search, multi.queries_per_search) == (1, 2)
    assert multi.join_queries(["a", "b"]) == "a; b" and multi.queries_of("a; b") == ["a", "b"]
    assert single.join_queries(["Paris, Texas"]) == "Paris, Texas"
    with pytest.raises(ValueError, match="one query at a time"):
        single.join_queries(["a", "b"])
    # a title holding the delimiter becomes one query that the split keeps whole
    assert multi.as_query(" Kiss; and  Tell ") == "Kiss and Tell" and single.as_query(" Paris; TX ") == "Paris; TX"
    assert multi.queries_of(multi.join_queries([multi.as_query("x;y"), "z"])) == ["x y", "z"]


def test_a_passage_line_reads_as_the_formatter_writes_it():
    line = format_doc(1, HITS[1][0])
    assert line == 'Doc 1(Title: Tokyo) 東京 is the capital of "Japan".'
    assert mode(mode="single").doc_as_observed(line) in format_single(["q"], HITS[1:])
    assert mode(mode="multi").doc_as_observed(line) == 'Doc 1(Title: Tokyo) 東京 is the capital of \\"Japan\\".'
    assert mode(mode="multi").doc_as_observed(line) in format_multi(["q1", "q2"], HITS)


def test_plans_are_worded_per_mode():
    single, multi = build_mode("single"), build_mode("multi")
    assert single.plan("A", 0, 1, 1) == "To answer this I need to look up A."
    assert single.plan("A", 0, 2, 1) == "To answer this I will first look up A."
    assert single.plan("B", 1, 2, 1) == "Next I need to look up B."
    assert multi.plan("A and B", 0, 1, 2) == "I will search A and B in parallel."
    assert multi.plan("C", 1, 2, 1) == "Next I will search C."


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="mode='both'"):
        build_mode("both")


def test_prompt_text():
    assert format_question("  Who wrote Hamlet ") == "Who wrote Hamlet?"
    assert format_question("Who?") == "Who?"
    assert user_content("who wrote hamlet", "multi") == instruction("multi") + "who wrote hamlet?"
    assert "up to two short queries, separated by semicolons" in instruction("multi", 2, ";")
