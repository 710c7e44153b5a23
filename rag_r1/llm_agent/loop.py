"""SearchAgentLoop: verl's RolloutLoop for the search agent (`actor_rollout_ref.rollout.loop=
rag_r1.llm_agent.loop:SearchAgentLoop`).

It validates `agent.*` / `retriever.*` (and veRL's tool config) at construction, checks the
prompts against the tool format, rolls the batch out and returns the trajectory batch of
docs/architecture.md: the left-padded `prompts`, the right-padded `responses` (generated and
retrieved tokens), `info_mask` over the retrieved ones, `rollout_log_probs` (the engine's log-prob
of each generated token, 0 elsewhere), the prompts' non-tensor keys plus per-trajectory counts,
and `env/*` metrics.

Two tool formats, one set of turn rules (tool_formats.py, generation.TurnRules):
- RAG-R1's `<search>` tags (default): the data scripts write the instruction into the prompts and
  `agent.*` sets the agent, so the first batch of training and of validation is checked to carry
  the instruction `agent.*` asks for;
- veRL's search tool, when `actor_rollout_ref.rollout.multi_turn.tool_config_path` names a veRL
  tool config: the chat messages (`raw_prompt`, `data.return_raw_chat=true`) are rendered with the
  tool's schema, as veRL's tool agent does, and the tool's `retrieval_service_url`, `topk`,
  `default_timeout` and rate limits stand for retriever.url, agent.topk, retriever.timeout and
  retriever.max_requests.

Two rollouts, the same batch: in sync mode GenerationManager advances the batch turn by turn through
`generate`; in async mode (`servers` given) AsyncSearchAgent runs every trajectory on its own on the
rollout servers.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch
from omegaconf import OmegaConf

from rag_r1.llm_agent.async_agent import AsyncSearchAgent, ThreadedRetriever
from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.generation import GenerationManager, Trajectory, TurnRules, trajectory_metrics
from rag_r1.llm_agent.guides import as_trajectory, load_guides, mix_guides
from rag_r1.llm_agent.modes import AgentMode, mode_of
from rag_r1.llm_agent.prompts import search_part
from rag_r1.llm_agent.tool_formats import SearchTool, TagFormat, ToolCallFormat, ToolFormat, load_search_tool
from rag_r1.reward.evidence import evidence_metrics
from rag_r1.search.async_client import AsyncRetrievalClient
from rag_r1.search.client import RetrievalClient
from verl.protocol import DataProto
from verl.trainer.ppo.rollout_loop import GenerateFn, RolloutLoop
from verl.trainer.ppo.rollout_servers import ServerPool
from verl.workers.rollout.base import assemble_output, build_prompt_batch, prompt_token_lists
from verl.workers.rollout.server import SamplingSettings

COUNT_KEYS = ("turns", "search_calls", "valid_actions", "obs_truncated")
MAX_ASSISTANT_TURNS = "actor_rollout_ref.rollout.multi_turn.max_assistant_turns"  # veRL's cap, read here
TOOL_CONFIG_PATH = "actor_rollout_ref.rollout.multi_turn.tool_config_path"  # veRL's tools, read here


@dataclass(frozen=True)
class RetrieverSettings:
    url: str | list[str]  # retriever.url: a /retrieve URL or a list of replicas
    timeout: float = 30.0  # retriever.timeout: seconds per request
    retries: int = 3  # retriever.retries: rounds over all replicas before failing
    max_requests: int | None = None  # retriever.max_requests: requests in flight at once in async mode; None: no cap

    @classmethod
    def from_config(cls, node, tool: SearchTool | None = None) -> "RetrieverSettings":
        """From the `retriever` node; veRL's search tool, when given, stands for the keys it has (the
        node setting one too, differently, is an error)."""
        node = {k: v for k, v in dict(node or {}).items() if k != "topk"}  # topk: see agent_config
        if tool is not None:
            for key, value in (("url", tool.url), ("timeout", tool.timeout), ("max_requests", tool.max_requests)):
                if value is not None and key in node and node[key] != value:
                    raise ValueError(f"config: retriever.{key}={node[key]} and {TOOL_CONFIG_PATH}'s {value} "
                                     f"disagree; set one")
                if value is not None:
                    node[key] = value
        if not node.get("url"):
            raise ValueError("config: retriever.url is not set (e.g. http://127.0.0.1:8000/retrieve)")
        url = node.pop("url")
        url = url if isinstance(url, str) else [str(u) for u in url]
        unknown = sorted(set(node) - {"timeout", "retries", "max_requests"})
        if unknown:
            raise ValueError(f"config: unknown key(s) retriever.{', retriever.'.join(unknown)}")
        return cls(url=url, **node)


def search_tool_of(config) -> SearchTool | None:
    """veRL's search tool of the tool config the run names, or None (RAG-R1's tags)."""
    path = OmegaConf.select(config, TOOL_CONFIG_PATH)
    return None if path is None else load_search_tool(path)


def agent_config(config, tool: SearchTool | None = None) -> AgentConfig:
    """AgentConfig from `agent.*` and `data.*`. Keys of other frameworks set an agent key that
    `agent.*` leaves out (any two of them given and different is an error): Search-R1's
    `retriever.topk` and the `topk` of veRL's search tool (`tool`) mean agent.topk, and veRL's
    `actor_rollout_ref.rollout.multi_turn.max_assistant_turns` agent.max_turns + 1 (the agent's last
    turn answers without searching)."""
    agent = AgentConfig.from_config(config)
    set_by = {key: f"agent.{key}={getattr(agent, key)}" for key in config.get("agent") or {}}
    for key, source, value in _borrowed_keys(config, tool):
        if value is None:
            continue
        if key in set_by and getattr(agent, key) != value:
            raise ValueError(f"config: {set_by[key]} and {source} disagree; set one")
        set_by.setdefault(key, source)
        agent = replace(agent, **{key: value})
    return agent


def _borrowed_keys(config, tool: SearchTool | None) -> list[tuple[str, str, int | None]]:
    """(agent key, the other framework's key as set, the agent value it means or None when unset)."""
    topk = (config.get("retriever") or {}).get("topk")
    turns = OmegaConf.select(config, MAX_ASSISTANT_TURNS)
    if turns is not None and turns < 2:
        raise ValueError(f"config: {MAX_ASSISTANT_TURNS}={turns}: expected >= 2 (the search agent searches in "
                         f"every turn but its last)")
    tool_topk = None if tool is None else tool.topk
    return [("topk", f"retriever.topk={topk}", None if topk is None else int(topk)),
            ("topk", f"{TOOL_CONFIG_PATH}'s topk={tool_topk}", tool_topk),
            ("max_turns", f"{MAX_ASSISTANT_TURNS}={turns} (= agent.max_turns + 1)",
             None if turns is None else int(turns) - 1)]


class SearchAgentLoop(RolloutLoop):
    def __init__(self, config, tokenizer, generate: GenerateFn, retriever=None, servers: ServerPool | None = None):
        """`retriever`: what answers searches (default: a client of retriever.url); a blocking one
        (`retrieve(queries, topk)`, as RetrievalClient) or, in async mode, a coroutine one."""
        super().__init__(config, tokenizer, generate, servers)
        self.tool = search_tool_of(config)
        self.agent = agent_config(config, self.tool)
        self.mode = mode_of(self.agent)
        self.format = build_format(tokenizer, self.agent, self.tool)
        settings = RetrieverSettings.from_config(config.get("retriever"), self.tool) if retriever is None else None
        if servers is None:
            if retriever is None:
                retriever = RetrievalClient(settings.url, timeout=settings.timeout, retries=settings.retries)
            self.manager = GenerationManager(generate, tokenizer, retriever, self.agent, self.format)
        else:
            if retriever is None:
                retriever = AsyncRetrievalClient(settings.url, timeout=settings.timeout, retries=settings.retries,
                                                 max_requests=settings.max_requests)
            elif not inspect.iscoroutinefunction(retriever.retrieve):
                retriever = ThreadedRetriever(retriever)
            self.async_agent = AsyncSearchAgent(servers, retriever, TurnRules(tokenizer, self.agent, self.format))
        self.guides = {}
        if self.agent.guide_file:
            if self.tool is not None:
                raise ValueError(f"config: agent.guide_file holds tag-format conversations; {TOOL_CONFIG_PATH} "
                                 "asks for tool calls")
            self.guides = load_guides(self.agent.guide_file, tokenizer, self.mode.queries_of)
        if OmegaConf.select(config, "algorithm.guides.only", default=False) and not self.guides:
            raise ValueError("algorithm.guides.only=true trains on the guides alone: set agent.guide_file")
        self.checked: set[bool] = set()  # `validate` values whose first batch was checked

    def run(self, prompts: DataProto, validate: bool = False) -> DataProto:
        if self.tool is not None:
            prompts = with_tool_prompts(prompts, self.tokenizer, self.tool, self.agent.max_start_length)
        token_lists = prompt_token_lists(prompts)
        if validate not in self.checked:
            check_instruction(self.tokenizer.batch_decode(token_lists), self.mode,
                              "validation" if validate else "training", tool_calls=self.tool is not None)
            self.checked.add(validate)
        rows, stats = self.roll_out(token_lists, validate)
        # the metrics describe the policy's own samples, before any guide takes a place
        metrics = trajectory_metrics(rows, stats)
        metrics.update(evidence_step_metrics(prompts.non_tensor_batch.get("extra_info"), rows))
        guided = [False] * len(rows)
        if self.guides and not validate:
            guided = mix_guides(rows, prompts.non_tensor_batch.get("uid", list(range(len(rows)))), self.guides)
            metrics["env/guided_ratio"] = sum(guided) / len(rows)
        trajectory = to_dataproto(prompts, rows, self.tokenizer.pad_token_id)
        columns = {**prompts.non_tensor_batch, **trajectory_columns(rows), "guided": guided}
        if self.agent.evidence_reward_weight > 0 and "extra_info" in columns:
            columns["extra_info"] = with_evidence_reward(columns["extra_info"], rows, self.agent.evidence_reward_weight)
        trajectory.union(DataProto.from_dict(non_tensors=columns))
        trajectory.meta_info = {"metrics": metrics}
        return trajectory

    def demonstrations(self, prompts: DataProto) -> DataProto:
        """The guides (agent.guide_file) of the prompts that have one, in their order, as finished
        trajectories marked `guided`; the prompts without one are left out."""
        token_lists = prompt_token_lists(prompts)
        keep = [i for i, ids in enumerate(token_lists) if tuple(ids) in self.guides]
        if not keep:
            raise ValueError(f"none of {len(token_lists)} training prompts has a guide in agent.guide_file="
                             f"{self.agent.guide_file}: were the guides built from these questions, with this "
                             "tokenizer and agent.mode?")
        rows = [as_trajectory(token_lists[i], self.guides[tuple(token_lists[i])]) for i in keep]
        chosen = prompts[keep]
        trajectory = to_dataproto(chosen, rows, self.tokenizer.pad_token_id)
        columns = {**chosen.non_tensor_batch, **trajectory_columns(rows), "guided": [True] * len(rows)}
        trajectory.union(DataProto.from_dict(non_tensors=columns))
        trajectory.meta_info = {"metrics": {"env/guided_ratio": len(rows) / len(token_lists)}}
        return trajectory

    def roll_out(self, token_lists: list[list[int]], validate: bool):
        """(rows, RolloutStats): the batch rollout in sync mode, every trajectory on its own in async."""
        meta = self.sampling_meta(validate)
        if self.servers is None:
            return self.manager.run(token_lists, meta)
        params = SamplingSettings.from_meta(self.config.actor_rollout_ref.rollout,
                                            {**meta, "stop": list(self.format.stop)}, self.agent.max_response_length)
        # the rollout's base seed, from torch's generator (seeding the driver makes a rollout reproducible)
        params = replace(params, seed=int(torch.randint(2**31 - 1, ())))
        return self.servers.run(self.async_agent.run(token_lists, params))


def build_format(tokenizer, agent: AgentConfig, tool: SearchTool | None) -> ToolFormat:
    """veRL's tool calls when a search tool is configured, else RAG-R1's tags in the agent's mode."""
    if tool is None:
        return TagFormat(tokenizer, mode_of(agent), agent.max_obs_length)
    return ToolCallFormat(tokenizer, mode_of(agent), agent.max_obs_length, tool)


def with_tool_prompts(prompts: DataProto, tokenizer, tool: SearchTool, max_start_length: int) -> DataProto:
    """`prompts` whose token ids are their chat messages (`raw_prompt`) rendered with the tool's
    schema, as veRL's tool agent renders them (the data set's ids were rendered without it)."""
    if "raw_prompt" not in prompts.non_tensor_batch:
        raise ValueError(f"the tool-call format renders the chat messages with the tools of {TOOL_CONFIG_PATH}: "
                         "the batch needs them as `raw_prompt` (set data.return_raw_chat=true)")
    token_lists = []
    for messages in prompts.non_tensor_batch["raw_prompt"]:
        text = tokenizer.apply_chat_template(list(messages), tools=[tool.schema], add_generation_prompt=True,
                                             tokenize=False)
        token_lists.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    longest = max(len(t) for t in token_lists)
    if longest > max_start_length:
        # the rolling context keeps the prompt's last max_start_length tokens: the tools would be cut
        raise ValueError(f"a prompt rendered with the tool's schema has {longest} tokens > data.max_start_length="
                         f"{max_start_length}: raise data.max_start_length (and data.max_prompt_length) so that the "
                         "policy keeps seeing the tools")
    rendered = build_prompt_batch(token_lists, tokenizer.pad_token_id)
    rendered.non_tensor_batch = dict(prompts.non_tensor_batch)
    rendered.meta_info = dict(prompts.meta_info)
    return rendered


def check_instruction(prompts: list[str], mode: AgentMode, split: str = "training", tool_calls: bool = False) -> None:
    """Raise ValueError, naming both sides, when a prompt lacks the instruction of the agent's mode
    (a data set built for the other mode, or with other max_queries / query_delimiter); with
    `tool_calls` (veRL's search tool), when a prompt carries a tag instruction of ours instead."""
    if tool_calls:
        tagged = [text for text in prompts if search_part(text) is not None]
        if tagged:
            raise ValueError(f"{len(tagged)} of the first {len(prompts)} {split} prompts carry RAG-R1's <search> tag "
                             f"instruction, but {TOOL_CONFIG_PATH} asks for tool calls: build the data for the tool "
                             "(veRL's Search-R1-like prompts) or leave the tool config out")
        return
    wrong = [text for text in prompts if mode.instruction not in text]
    if not wrong:
        return
    found = search_part(wrong[0])
    has = "no instruction of rag_r1.llm_agent.prompts" if found is None else repr(found)
    raise ValueError(
        f"{len(wrong)} of the first {len(prompts)} {split} prompts lack the instruction that agent.mode={mode.name}, "
        f"agent.max_queries={mode.max_queries}, agent.query_delimiter={mode.delimiter!r} ask for: the agent "
        f"expects {search_part(mode.instruction)!r}, the data's prompt has {has}. Build the data with the agent's "
        "settings (scripts/data_process: --mode, --max-queries, --query-delimiter) or set agent.* to the data's.")


def with_evidence_reward(extra_info, rows: list[Trajectory], weight: float) -> list:
    """Copies of the rows' extra_info carrying what the reward's evidence term needs: the ids this
    trajectory retrieved and the term's weight (the reward function sees only extra_info)."""
    return [{**(info or {}), "retrieved_ids": row.retrieved_ids, "evidence_reward_weight": weight}
            for info, row in zip(extra_info, rows)]


def evidence_step_metrics(extra_info, rows: list[Trajectory]) -> dict[str, float]:
    """`env/evidence_recall`, `env/evidence_all` and `env/evidence_recall_round_k` of one rollout, for
    rows whose `extra_info` carries `supporting_ids`: a metric of search quality, not a reward.
    Empty when no row has them."""
    if extra_info is None:
        return {}
    scored = []
    for info, row in zip(extra_info, rows):
        ids = (info or {}).get("supporting_ids")
        # Parquet hands lists back as numpy arrays: make them plain lists before truth tests.
        scored.append({"supporting_ids": [] if ids is None else list(ids), "retrieved": row.retrieved_ids})
    evidence = evidence_metrics(scored)
    if not evidence:
        return {}
    metrics = {"env/evidence_recall": evidence["evidence_recall"], "env/evidence_all": evidence["evidence_all"],
               "env/retrieved_per_question": evidence["retrieved_per_question"]}
    for k, value in enumerate(evidence["evidence_recall_by_round"], start=1):
        metrics[f"env/evidence_recall_round_{k}"] = value
    return metrics


def to_dataproto(prompts: DataProto, rows: list[Trajectory], pad_token_id: int) -> DataProto:
    """The batch keys of the trajectories; responses are as wide as the longest (at least 1)."""
    width = max([len(r.response) for r in rows] + [1])
    responses = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.long)
    info_mask = torch.zeros((len(rows), width), dtype=torch.long)
    log_probs = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, row in enumerate(rows):
        n = len(row.response)
        responses[i, :n] = torch.as_tensor(row.response, dtype=torch.long)
        response_mask[i, :n] = 1
        info_mask[i, :n] = torch.as_tensor(row.info_mask, dtype=torch.long)
        log_probs[i, :n] = torch.as_tensor(row.log_probs, dtype=torch.float32)
    prompt_part = prompts.select(batch_keys=["input_ids", "attention_mask", "position_ids"],
                                 non_tensor_batch_keys=[], meta_info_keys=[])
    trajectory = assemble_output(prompt_part, responses, response_mask)
    trajectory.batch["info_mask"] = info_mask
    trajectory.batch["rollout_log_probs"] = log_probs
    return trajectory


def trajectory_columns(rows: list[Trajectory]) -> dict[str, list]:
    """Per-trajectory non-tensor columns: counts, and the queries / retrieved ids of each round."""
    columns: dict[str, list] = {key: [getattr(r, key) for r in rows] for key in COUNT_KEYS}
    columns["num_queries"] = [sum(len(q) for q in r.queries) for r in rows]
    columns["answered"] = [r.answered for r in rows]
    columns["queries"] = [r.queries for r in rows]
    columns["retrieved_ids"] = [r.retrieved_ids for r in rows]
    return columns
