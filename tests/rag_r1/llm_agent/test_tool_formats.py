"""The two tool formats: what a turn asks for, and the token ids that answer it (the tag format's
<information> block, the tool-call format's chat-templated tool messages), malformed calls included."""
from __future__ import annotations

import pytest

from rag_r1.llm_agent.modes import build_mode
from rag_r1.llm_agent.prompts import TOOL_INVALID_NOTE, empty_search_note, invalid_action_note
from rag_r1.llm_agent.tool_formats import (INFO_CLOSE, INFO_OPEN, Action, Call, TagFormat, ToolCallFormat,
                                           load_search_tool)
from tool_chat_template import SEARCH_TOOL_YAML, tool_tokenizer, write_tool_config

HIT = {"id": "p1", "contents": '"Paris"\nParis is the capital of France.'}
RESULT = '{"query": ["capital of France"], "documents": ["Doc 1(Title: Paris) Paris is the capital of France."]}'
# what follows an assistant message in the template, up to the next assistant header, around one tool message
TOOL_OPEN = "\n<|im_start|>user\n<tool_response>\n"
TOOL_CLOSE = "\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tool_tok():
    return tool_tokenizer()


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    return load_search_tool(write_tool_config(tmp_path_factory.mktemp("tools") / "search_tool_config.yaml"))


def call_text(arguments: str, name: str = "search") -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


def test_tag_format_reads_search_answer_empty_search_and_nothing(tokenizer):
    tags = TagFormat(tokenizer, build_mode("multi"), 200)
    assert tags.stop == ("</search>", "</answer>")
    assert tags.parse("<think> x </think><search> a, b </search>") == Action("search", (Call(["a", "b"]),))
    assert tags.parse("<answer> Paris </answer>") == Action("answer")
    assert tags.parse("<search> , </search>") == Action("search", (Call([], "no query"),))
    assert tags.parse("I will search later") == Action(None)
    decode = tokenizer.decode
    assert decode(tags.correction(tags.parse("<search> , </search>"), after_eos=False)) == empty_search_note("multi")
    assert decode(tags.correction(Action(None), after_eos=False)) == invalid_action_note("multi")
    ids, cut = tags.observation(Action("search", (Call(["capital of France"]),)), [[[HIT]]], after_eos=False)
    assert decode(ids) == INFO_OPEN + RESULT + INFO_CLOSE and not cut


def test_the_veRL_search_tool_config_is_read(tool, tmp_path):
    assert tool.name == "search" and tool.url == "http://127.0.0.1:8000/retrieve"
    assert tool.topk is None and tool.timeout == 30 and tool.max_requests == 120  # min(num_workers, rate_limit)
    assert tool.schema["function"]["parameters"]["required"] == ["query_list"]
    no_limit = tmp_path / "no_limit.yaml"
    no_limit.write_text(SEARCH_TOOL_YAML.replace('"rate_limit": 120', '"rate_limit": 8, "topk": 5')
                        .replace('"default_timeout": 30', '"enable_global_rate_limit": false'))
    assert load_search_tool(no_limit).max_requests == 120 and load_search_tool(no_limit).topk == 5


@pytest.mark.parametrize("change, message", [
    (("verl.tools.search_tool.SearchTool", "verl.tools.gsm8k_tool.Gsm8kTool"), "class_name 'verl.tools.gsm8k_tool."
     "Gsm8kTool' is not supported; the search agent implements verl.tools.search_tool.SearchTool only"),
    (('"num_workers": 120', '"workers": 120'), r"unknown config key\(s\) \['workers'\]"),
    (("query_list:", "queries:"), "tool_schema must be a function schema with a name and a 'query_list' parameter"),
])
def test_a_tool_config_we_cannot_run_is_refused_naming_what(tmp_path, change, message):
    path = tmp_path / "tools.yaml"
    path.write_text(SEARCH_TOOL_YAML.replace(*change))
    with pytest.raises(ValueError, match=message):
        load_search_tool(path)


def test_tool_calls_are_read_as_hermes_writes_them(tool_tok, tool):
    calls = ToolCallFormat(tool_tok, build_mode("multi", max_queries=2), 400, tool)
    assert calls.stop == ()  # the policy ends its message with eos
    assert calls.parse(call_text('{"query_list": [" a ", "", "b", "c"]}') + "<|im_end|>") == \
        Action("search", (Call(["a", "b"]),))  # stripped, empties dropped, max_queries kept
    # OpenAI's layout (arguments as a JSON string) and several calls in one turn
    two = call_text('"{\\"query_list\\": [\\"a\\"]}"') + "\n" + call_text('{"query_list": ["b"]}')
    assert calls.parse(two) == Action("search", (Call(["a"]), Call(["b"])))
    assert calls.parse("<answer> Paris </answer>" + call_text('{"query_list": ["a"]}')) == Action("answer")
    assert calls.parse("no call, no answer") == Action(None)


@pytest.mark.parametrize("text, problem", [
    ("<tool_call>{search: a}</tool_call>", "the tool call is not valid JSON (Expecting property name enclosed in "
                                           "double quotes at character 1)"),
    ("<tool_call>[1, 2]</tool_call>", 'a tool call is a JSON object with "name" and "arguments"'),
    (call_text('{"query_list": ["a"]}', name="browse"), "unknown tool 'browse'; the only tool is 'search'"),
    (call_text('{"queries": ["a"]}'), '"arguments" must hold "query_list", a list of query strings'),
    (call_text('{"query_list": "a"}'), '"arguments" must hold "query_list", a list of query strings'),
    (call_text('{"query_list": ["a", 3]}'), '"arguments" must hold "query_list", a list of query strings'),
    (call_text('{"query_list": []}'), '"query_list" holds no query'),
    (call_text('{"query_list": [" "]}'), '"query_list" holds no query'),
    ('<tool_call>{"name": "search", "arguments": {"query_li', "the tool call was not closed with </tool_call>"),
])
def test_a_malformed_call_is_answered_with_what_was_wrong(tool_tok, tool, text, problem):
    calls = ToolCallFormat(tool_tok, build_mode("multi"), 400, tool)
    action = calls.parse(text)
    assert action == Action("search", (Call([], problem),)) and action.queries == []
    answer = tool_tok.decode(calls.correction(action, after_eos=False))
    assert answer == "<|im_end|>" + TOOL_OPEN + f"Error: {problem}. No search was run for this call." + TOOL_CLOSE


def test_tool_messages_are_rendered_by_the_chat_template_after_the_policys_eos(tool_tok, tool):
    calls = ToolCallFormat(tool_tok, build_mode("multi"), 400, tool)
    action = Action("search", (Call(["capital of France"]), Call([], "oops")))
    ids, cut = calls.observation(action, [[[HIT]], []], after_eos=True)
    # the policy wrote <|im_end|> itself: the observation starts after it
    assert tool_tok.decode(ids) == ("\n<|im_start|>user\n<tool_response>\n" + RESULT + "\n</tool_response>\n"
                                    "<tool_response>\nError: oops. No search was run for this call." + TOOL_CLOSE)
    assert not cut
    # a turn cut by max_new_tokens has no eos: the template's closing comes first
    ids, _ = calls.observation(action, [[[HIT]], []], after_eos=False)
    assert tool_tok.decode(ids).startswith("<|im_end|>" + TOOL_OPEN)
    assert tool_tok.decode(calls.correction(Action(None), after_eos=True)) == \
        "\n<|im_start|>user\n" + TOOL_INVALID_NOTE + "<|im_end|>\n<|im_start|>assistant\n"


def test_tool_results_are_cut_so_the_observation_fits_max_obs_length(tool_tok, tool):
    frame = len(tool_tok.encode(TOOL_OPEN + TOOL_CLOSE, add_special_tokens=False))
    calls = ToolCallFormat(tool_tok, build_mode("multi"), frame + 10, tool)
    ids, cut = calls.observation(Action("search", (Call(["capital of France"]),)), [[[HIT]]], after_eos=True)
    text = tool_tok.decode(ids)
    assert cut and len(ids) <= frame + 10 and text.startswith(TOOL_OPEN) and text.endswith(TOOL_CLOSE)
    assert RESULT.startswith(text[len(TOOL_OPEN):-len(TOOL_CLOSE)])
    with pytest.raises(ValueError, match="agent.max_obs_length=8 leaves no room for results inside the chat "
                                         "template's tool message"):
        ToolCallFormat(tool_tok, build_mode("multi"), 8, tool)


def test_a_template_that_drops_tool_messages_is_refused(tool, tokenizer):
    from tiny_model import make_tokenizer

    plain = make_tokenizer()
    plain.chat_template = ("{% for m in messages %}{% if m.role != 'tool' %}{{ m.role + ': ' + m.content + '\\n' }}"
                           "{% endif %}{% endfor %}")
    with pytest.raises(ValueError, match="does not render 1 tool message"):
        ToolCallFormat(plain, build_mode("multi"), 400, tool)
