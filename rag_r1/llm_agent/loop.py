"""SearchAgentLoop: verl's RolloutLoop for the search agent (`actor_rollout_ref.rollout.loop=
rag_r1.llm_agent.loop:SearchAgentLoop`).

It validates `agent.*` / `retriever.*` at construction, checks that the first batch's prompts (of
training, and of validation) carry the instruction `agent.*` asks for (the data scripts write the
prompts, the config sets the agent: nothing else ties them), runs GenerationManager on the batch and
returns the trajectory batch of docs/architecture.md: the original left-padded `prompts`, the
right-padded `responses` (generated and retrieved tokens), `info_mask` over the retrieved ones,
`rollout_log_probs` (the engine's log-prob of each generated token, 0 elsewhere), the prompts'
non-tensor keys plus per-trajectory counts, and `env/*` metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from omegaconf import OmegaConf

from rag_r1.llm_agent.config import AgentConfig
from rag_r1.llm_agent.generation import GenerationManager, Retriever, Trajectory, trajectory_metrics
from rag_r1.llm_agent.guides import load_guides, mix_guides
from rag_r1.llm_agent.modes import AgentMode
from rag_r1.llm_agent.prompts import search_part
from rag_r1.reward.evidence import evidence_metrics
from rag_r1.search.client import RetrievalClient
from verl.protocol import DataProto
from verl.trainer.ppo.rollout_loop import GenerateFn, RolloutLoop
from verl.workers.rollout.base import assemble_output

COUNT_KEYS = ("turns", "search_calls", "valid_actions", "obs_truncated")
MAX_ASSISTANT_TURNS = "actor_rollout_ref.rollout.multi_turn.max_assistant_turns"  # veRL's cap, read here


@dataclass(frozen=True)
class RetrieverSettings:
    url: str | list[str]  # retriever.url: a /retrieve URL or a list of replicas
    timeout: float = 30.0  # retriever.timeout: seconds per request
    retries: int = 3  # retriever.retries: rounds over all replicas before failing

    @classmethod
    def from_config(cls, node) -> "RetrieverSettings":
        node = {k: v for k, v in dict(node or {}).items() if k != "topk"}  # topk: see agent_config
        if not node.get("url"):
            raise ValueError("config: retriever.url is not set (e.g. http://127.0.0.1:8000/retrieve)")
        url = node.pop("url")
        url = url if isinstance(url, str) else [str(u) for u in url]
        unknown = sorted(set(node) - {"timeout", "retries"})
        if unknown:
            raise ValueError(f"config: unknown key(s) retriever.{', retriever.'.join(unknown)}")
        return cls(url=url, **node)


def agent_config(config) -> AgentConfig:
    """AgentConfig from `agent.*` and `data.*`. Two keys of other frameworks set an agent key that
    `agent.*` leaves out (both given and different is an error): Search-R1's `retriever.topk` (agent.topk)
    and veRL's `actor_rollout_ref.rollout.multi_turn.max_assistant_turns` (agent.max_turns + 1: the
    agent's last turn answers without searching)."""
    agent = AgentConfig.from_config(config)
    given = config.get("agent") or {}
    for key, source, value in _borrowed_keys(config):
        if value is None:
            continue
        if key in given and getattr(agent, key) != value:
            raise ValueError(f"config: agent.{key}={getattr(agent, key)} and {source} disagree; set one")
        agent = replace(agent, **{key: value})
    return agent


def _borrowed_keys(config) -> list[tuple[str, str, int | None]]:
    """(agent key, the other framework's key as set, the agent value it means or None when unset)."""
    topk = (config.get("retriever") or {}).get("topk")
    turns = OmegaConf.select(config, MAX_ASSISTANT_TURNS)
    if turns is not None and turns < 2:
        raise ValueError(f"config: {MAX_ASSISTANT_TURNS}={turns}: expected >= 2 (the search agent searches in "
                         f"every turn but its last)")
    return [("topk", f"retriever.topk={topk}", None if topk is None else int(topk)),
            ("max_turns", f"{MAX_ASSISTANT_TURNS}={turns} (= agent.max_turns + 1)",
             None if turns is None else int(turns) - 1)]


class SearchAgentLoop(RolloutLoop):
    def __init__(self, config, tokenizer, generate: GenerateFn, retriever: Retriever | None = None):
        super().__init__(config, tokenizer, generate)
        self.agent = agent_config(config)
        if retriever is None:
            settings = RetrieverSettings.from_config(config.get("retriever"))
            retriever = RetrievalClient(settings.url, timeout=settings.timeout, retries=settings.retries)
        self.manager = GenerationManager(generate, tokenizer, retriever, self.agent)
        self.guides = {}
        if self.agent.guide_file:
            self.guides = load_guides(self.agent.guide_file, tokenizer, self.manager.mode.queries_of)
        self.checked: set[bool] = set()  # `validate` values whose first batch was checked

    def run(self, prompts: DataProto, validate: bool = False) -> DataProto:
        ids, mask = prompts.batch["input_ids"], prompts.batch["attention_mask"].bool()
        token_lists = [r[m].tolist() for r, m in zip(ids, mask)]
        if validate not in self.checked:
            check_instruction(self.tokenizer.batch_decode(token_lists), self.manager.mode,
                              "validation" if validate else "training")
            self.checked.add(validate)
        rows, stats = self.manager.run(token_lists, self.sampling_meta(validate))
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


def check_instruction(prompts: list[str], mode: AgentMode, split: str = "training") -> None:
    """Raise ValueError, naming both sides, when a prompt lacks the instruction of the agent's mode
    (a data set built for the other mode, or with other max_queries / query_delimiter)."""
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
