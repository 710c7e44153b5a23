from __future__ import annotations

import pytest

from rag_r1.llm_agent.actions import parse_action, split_queries


@pytest.mark.parametrize("text, expected", [
    ("<search> capital of France </search>", ("search", "capital of France")),
    ("<think>x</think>\n<answer>\n  Paris \n</answer>", ("answer", "Paris")),
    # unclosed tags are no action
    ("<think> let me look <search> capital of France", (None, "")),
    ("<answer> Paris", (None, "")),
    ("no tags at all", (None, "")),
    ("", (None, "")),
    # several tags: the first COMPLETE one wins, whichever kind it is
    ("<search> a </search><answer> b </answer>", ("search", "a")),
    ("<answer> b </answer><search> a </search>", ("answer", "b")),
    ("<search> unfinished <answer> b </answer> </search>", ("answer", "b")),
    # a repeated opening tag: the content starts after the last one
    ("<search> <search> q </search>", ("search", "q")),
    # a stray closing tag before any opening one is skipped
    ("</search> text <answer> x </answer>", ("answer", "x")),
    # empty content is still a complete action (the mode decides it has no query)
    ("<search>   </search>", ("search", "")),
    ("<answer></answer>", ("answer", "")),
    # whitespace and newlines inside the content are kept between its ends
    ("<search>\n\tfirst line\nsecond line \n</search>", ("search", "first line\nsecond line")),
    # tags inside a CLOSED think block are reasoning, not actions
    ("<think> I could write <answer> x </answer> now </think><search> q </search>", ("search", "q")),
    ("<think> maybe <search> a </search> </think> nothing else", (None, "")),
    # inside a still-open think block the policy did issue the action (generation stopped on it)
    ("<think> I will check <search> q </search>", ("search", "q")),
    # unicode survives untouched
    ("<search> Zürich Straße, 東京タワー </search>", ("search", "Zürich Straße, 東京タワー")),
    ("<answer> Ångström ✓ </answer>", ("answer", "Ångström ✓")),
    # other tags that merely start like ours are not ours
    ("<searching> a </searching>", (None, "")),
])
def test_parse_action(text, expected):
    assert parse_action(text) == expected


@pytest.mark.parametrize("content, kwargs, expected", [
    ("a, b, c", {}, ["a", "b", "c"]),
    (" a ,, b , ,c ", {}, ["a", "b", "c"]),
    ("", {}, []),
    (" , ,  ", {}, []),
    ("a, b, c, d, e", {}, ["a", "b", "c"]),
    ("a, b, c, d, e", {"max_queries": 4}, ["a", "b", "c", "d"]),
    ("one query only", {}, ["one query only"]),
    ("x; y, z; w", {"delimiter": ";"}, ["x", "y, z", "w"]),
    ("x\n y \n\n z", {"delimiter": "\n"}, ["x", "y", "z"]),
    ("a, a, b", {}, ["a", "a", "b"]),  # duplicates are the retrieval request's business
    ("Zürich, 東京", {}, ["Zürich", "東京"]),
])
def test_split_queries(content, kwargs, expected):
    assert split_queries(content, **kwargs) == expected
