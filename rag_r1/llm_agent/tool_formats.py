"""How the policy asks for a search and how the results come back: the two tool formats of one loop.

- `TagFormat` (RAG-R1, Search-R1): the policy writes `<search> q1, q2 </search>` inside its one
  assistant turn and the agent appends `"\\n<information>\\n" + results + "\\n</information>\\n"`.
  Generation stops at `</search>` or `</answer>`.
- `ToolCallFormat` (veRL's search tool, chosen by `actor_rollout_ref.rollout.multi_turn.tool_config_path`):
  the policy calls the tool through its chat template, hermes style as Qwen2.5 writes it
  (`<tool_call>{"name": "search", "arguments": {"query_list": ["q1", "q2"]}}</tool_call>`), and ends
  its message; every call of the turn is answered by a tool message, rendered with the tokenizer's
  chat template together with the header of the next assistant message. Generation stops at eos.

Both end a trajectory with `<answer> ... </answer>`. A format reads one generated turn into an
`Action` (`parse`) and makes the token ids that follow it (info_mask 1): a search's results
(`observation`), or, after a turn without a usable search or answer, what was wrong (`correction`).
The turn rules (turn limit, final turn, counts, which passages to show) are generation.TurnRules',
shared by the batch and the per-trajectory rollouts.
"""
from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import yaml

from rag_r1.llm_agent.actions import blocks, first_block, parse_action
from rag_r1.llm_agent.modes import AgentMode, Hits
from rag_r1.llm_agent.prompts import TOOL_INVALID_NOTE, empty_search_note, tool_call_error

INFO_OPEN, INFO_CLOSE = "\n<information>\n", "\n</information>\n"


def observation_budget(tokenizer, max_obs_length: int) -> int:
    """Tokens of results one `<information>` block of `max_obs_length` tokens holds: the rest is its
    two tags. The rollout cuts results to it, and so do the SFT builders."""
    tags = sum(len(tokenizer.encode(tag, add_special_tokens=False)) for tag in (INFO_OPEN, INFO_CLOSE))
    if max_obs_length - tags < 1:
        raise ValueError(f"agent.max_obs_length={max_obs_length} leaves no room inside the "
                         f"<information> tags ({tags} tokens)")
    return max_obs_length - tags


@dataclass(frozen=True)
class Call:
    """One search the policy asked for: its queries, or what was wrong with it."""

    queries: list[str]  # empty when the call is malformed
    problem: str | None = None  # shown to the policy; None: well formed


@dataclass(frozen=True)
class Action:
    kind: str | None  # "search" | "answer" | None (no complete action)
    calls: tuple[Call, ...] = ()  # a search's calls, in the order written

    @property
    def queries(self) -> list[str]:
        """The queries of every well-formed call, in order (what one retrieval request asks)."""
        return [q for call in self.calls for q in call.queries]


class ToolFormat(ABC):
    stop: tuple[str, ...]  # stop strings of every turn's generation (eos always stops)

    def __init__(self, tokenizer, mode: AgentMode, max_obs_length: int):
        self.tokenizer, self.mode, self.max_obs_length = tokenizer, mode, max_obs_length

    @abstractmethod
    def parse(self, text: str) -> Action:
        """The action of one generated turn (its decoded text, special tokens skipped)."""

    @abstractmethod
    def observation(self, action: Action, shown: list[list[Hits]], after_eos: bool) -> tuple[list[int], bool]:
        """(token ids, whether results were cut to max_obs_length) answering a search whose calls
        showed `shown` (per call, per query, the hits); `after_eos`: the turn ended with the eos token."""

    @abstractmethod
    def correction(self, action: Action, after_eos: bool) -> list[int]:
        """Token ids telling the policy what was wrong with a turn that had no usable action."""

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)


class TagFormat(ToolFormat):
    stop = ("</search>", "</answer>")

    def __init__(self, tokenizer, mode: AgentMode, max_obs_length: int):
        super().__init__(tokenizer, mode, max_obs_length)
        self.budget = observation_budget(tokenizer, max_obs_length)
        self.open_ids, self.close_ids = self.encode(INFO_OPEN), self.encode(INFO_CLOSE)
        self.invalid_ids, self.empty_ids = self.encode(mode.invalid_note), self.encode(empty_search_note(mode.name))

    def parse(self, text: str) -> Action:
        tag, content = parse_action(text)
        if tag == "answer":
            return Action("answer")
        if tag == "search":
            queries = self.mode.queries_of(content)
            return Action("search", (Call(queries, None if queries else "no query"),))
        return Action(None)

    def observation(self, action: Action, shown: list[list[Hits]], after_eos: bool) -> tuple[list[int], bool]:
        [call], [hits] = action.calls, shown
        body = self.encode(self.mode.format_observation(call.queries, hits))
        # cut the results, never the tags, so the block always closes
        return self.open_ids + body[:self.budget] + self.close_ids, len(body) > self.budget

    def correction(self, action: Action, after_eos: bool) -> list[int]:
        return self.empty_ids if action.kind == "search" else self.invalid_ids


# Markers put into a conversation to find where the chat template places each part.
_ASSISTANT = "\x1eRAGR1_ASSISTANT\x1e"
_CONTENT = "\x1eRAGR1_CONTENT_{}\x1e"
_CONTENT_SPLIT = re.compile("\x1eRAGR1_CONTENT_\\d+\x1e")


class ToolCallFormat(ToolFormat):
    stop = ()

    def __init__(self, tokenizer, mode: AgentMode, max_obs_length: int, tool: SearchTool):
        super().__init__(tokenizer, mode, max_obs_length)
        self.tool = tool
        self._frames: dict[tuple[str, int], list[list[int]]] = {}
        self._eos_ids = self.encode(tokenizer.eos_token)
        framing = sum(len(f) for f in self.frames("tool", 1, after_eos=False))
        if max_obs_length - framing < 1:
            raise ValueError(f"agent.max_obs_length={max_obs_length} leaves no room for results inside "
                             f"the chat template's tool message ({framing} tokens)")

    def parse(self, text: str) -> Action:
        if first_block(text, ("tool_call", "answer"))[0] == "answer":
            return Action("answer")
        contents, unclosed = blocks(text, "tool_call")
        calls = [self._call(content) for content in contents]
        if unclosed:
            calls.append(Call([], "the tool call was not closed with </tool_call>"))
        return Action("search", tuple(calls)) if calls else Action(None)

    def _call(self, content: str) -> Call:
        try:
            call = json.loads(content)
        except json.JSONDecodeError as error:
            return Call([], f"the tool call is not valid JSON ({error.msg} at character {error.pos})")
        if not isinstance(call, dict) or "name" not in call:
            return Call([], 'a tool call is a JSON object with "name" and "arguments"')
        if call["name"] != self.tool.name:
            return Call([], f"unknown tool {call['name']!r}; the only tool is {self.tool.name!r}")
        arguments = call["arguments"] if "arguments" in call else None
        if isinstance(arguments, str):  # OpenAI's layout: the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        query_list = arguments["query_list"] if isinstance(arguments, dict) and "query_list" in arguments else None
        if not isinstance(query_list, list) or not all(isinstance(q, str) for q in query_list):
            return Call([], '"arguments" must hold "query_list", a list of query strings')
        queries = [q.strip() for q in query_list if q.strip()][:self.mode.queries_per_search]
        return Call(queries) if queries else Call([], '"query_list" holds no query')

    def observation(self, action: Action, shown: list[list[Hits]], after_eos: bool) -> tuple[list[int], bool]:
        contents = [tool_call_error(call.problem) if call.problem else self.mode.format_observation(call.queries, hits)
                    for call, hits in zip(action.calls, shown, strict=True)]
        return self._follow_up("tool", contents, after_eos)

    def correction(self, action: Action, after_eos: bool) -> list[int]:
        if action.kind == "search":  # every call was malformed: each gets its error as its answer
            return self._follow_up("tool", [tool_call_error(call.problem) for call in action.calls], after_eos)[0]
        return self._follow_up("user", [TOOL_INVALID_NOTE], after_eos)[0]

    def _follow_up(self, role: str, contents: list[str], after_eos: bool) -> tuple[list[int], bool]:
        """Messages of `role` after the policy's turn, then the next assistant header, as token ids.
        The contents are cut in order so that the whole fits max_obs_length."""
        frames = self.frames(role, len(contents), after_eos)
        room = self.max_obs_length - sum(len(f) for f in frames)
        ids, cut = list(frames[0]), False
        for content, frame in zip(contents, frames[1:]):
            body = self.encode(content)
            kept = body[:max(room, 0)]
            room -= len(kept)
            cut = cut or len(kept) < len(body)
            ids += kept + frame
        return ids, cut

    def frames(self, role: str, count: int, after_eos: bool) -> list[list[int]]:
        """Token ids of the chat template's text around `count` messages of `role` that follow an
        assistant message: from the end of its content to the next assistant header, split at each
        message's content (count + 1 parts). After an eos the policy already wrote the token that
        closes its message, and the first part starts after it."""
        key = (role, count)
        if key not in self._frames:
            self._frames[key] = [self.encode(text) for text in self._frame_texts(role, count)]
        frames = list(self._frames[key])
        if after_eos and frames[0][:len(self._eos_ids)] == self._eos_ids:
            frames[0] = frames[0][len(self._eos_ids):]
        return frames

    def _frame_texts(self, role: str, count: int) -> list[str]:
        messages = [{"role": "user", "content": "question"}, {"role": "assistant", "content": _ASSISTANT}]
        messages += [{"role": role, "content": _CONTENT.format(i)} for i in range(count)]
        text = self.tokenizer.apply_chat_template(messages, tools=[self.tool.schema], add_generation_prompt=True,
                                                  tokenize=False)
        tail = text.split(_ASSISTANT)
        parts = _CONTENT_SPLIT.split(tail[-1])
        if len(tail) != 2 or len(parts) != count + 1 or _CONTENT_SPLIT.findall(tail[-1]) != [
                _CONTENT.format(i) for i in range(count)]:
            raise ValueError(f"the tokenizer's chat template does not render {count} {role} message(s) after an "
                             f"assistant message, each once and in order: the tool-call format needs a template "
                             f"that renders tool messages")
        return parts


# veRL's search tool (verl/tools/search_tool.py) and the keys of its `config`.
VERL_SEARCH_TOOL = "verl.tools.search_tool.SearchTool"
_TOOL_CONFIG_KEYS = {"retrieval_service_url", "topk", "default_timeout", "num_workers", "rate_limit",
                     "enable_global_rate_limit", "type"}


@dataclass(frozen=True)
class SearchTool:
    """The search tool of a veRL tool config (`multi_turn.tool_config_path`)."""

    name: str  # the function the policy calls (tool_schema.function.name)
    schema: dict  # the OpenAI function schema the chat template shows the policy
    url: str | None  # config.retrieval_service_url: the retriever.url it means
    topk: int | None  # config.topk: the agent.topk it means
    timeout: float | None  # config.default_timeout: the retriever.timeout it means
    # config.num_workers and rate_limit (when enable_global_rate_limit, veRL's default): retrieval
    # requests in flight at once, the retriever.max_requests it means
    max_requests: int | None


def load_search_tool(path: str | Path) -> SearchTool:
    """The one tool of a veRL tool-config YAML (`tools: [{class_name, config, tool_schema}]`), which
    must be veRL's search tool; anything else is refused naming the file and the entry."""
    where = f"multi_turn.tool_config_path={path}"
    tools = (yaml.safe_load(Path(path).read_text()) or {}).get("tools")
    if not isinstance(tools, list) or len(tools) != 1:
        raise ValueError(f"{where}: expected a 'tools' list with one tool, veRL's search tool")
    [tool] = tools
    if tool.get("class_name") != VERL_SEARCH_TOOL:
        raise ValueError(f"{where}: class_name {tool.get('class_name')!r} is not supported; the search agent "
                         f"implements {VERL_SEARCH_TOOL} only")
    config = dict(tool.get("config") or {})
    unknown = sorted(set(config) - _TOOL_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown config key(s) {unknown} of {VERL_SEARCH_TOOL}; known: "
                         f"{sorted(_TOOL_CONFIG_KEYS)}")
    schema = tool.get("tool_schema") or {}
    function = schema.get("function") or {}
    properties = (function.get("parameters") or {}).get("properties") or {}
    if schema.get("type") != "function" or not function.get("name") or "query_list" not in properties:
        raise ValueError(f"{where}: tool_schema must be a function schema with a name and a 'query_list' parameter")
    limits = [config[key] for key in ("num_workers",) if key in config]
    if config.get("enable_global_rate_limit", True) and "rate_limit" in config:
        limits.append(config["rate_limit"])
    return SearchTool(name=function["name"], schema=schema, url=config.get("retrieval_service_url"),
                      topk=config.get("topk"), timeout=config.get("default_timeout"),
                      max_requests=min(limits) if limits else None)
