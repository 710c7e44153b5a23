"""AgentConfig: every setting of the search agent, its one default and what it means.

The trainer's `agent.*` node (free-form for verl) is validated here at start-up; the rolling
lengths come from `data.*`, which keeps veRL/Search-R1 meanings. A wrong value fails with a
message naming its key.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

MODES = ("single", "multi")


@dataclass(frozen=True)
class AgentConfig:
    # The three length caps have no default here: their one default lives in verl's DataConfig.
    max_prompt_length: int  # data.max_prompt_length: cap of the rolling prompt fed to each turn
    max_start_length: int  # data.max_start_length: cap of the initial prompt inside the rolling one
    max_response_length: int  # data.max_response_length: tokens generated per turn
    mode: str = "multi"  # single: one query per <search>; multi: several, split on query_delimiter
    max_turns: int = 4  # turns that may search; one more turn without search follows
    max_queries: int = 3  # multi mode: queries kept per <search> (the rest are dropped)
    query_delimiter: str = ","  # multi mode: separator of the queries inside <search>
    max_obs_length: int = 1000  # tokens of one <information> block, tags included
    topk: int = 3  # passages retrieved per query
    # Show each passage once per trajectory: a search brings, per query, the best `topk` passages the
    # trajectory has not been shown yet (in earlier rounds or for the same search's other queries; a
    # passage that max_obs_length cut from its block counts as shown).
    # False = the paper's retrieval, where repeating a query repeats its passages.
    unseen_passages: bool = False
    # Experiments only: adds weight x (share of the row's supporting_ids it retrieved) to the reward,
    # for rows whose extra_info carries supporting_ids. 0 = the paper's pure answer reward.
    evidence_reward_weight: float = 0.0
    # Gold evidence trajectories (SFT conversations) mixed into training groups, one per group whose
    # prompt has one (rag_r1.llm_agent.guides); None = on-policy samples only.
    guide_file: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"agent.mode={self.mode!r}: expected one of {MODES}")
        for key in ("max_turns", "max_queries", "topk", "max_prompt_length", "max_start_length",
                    "max_response_length"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{_node(key)}.{key}={value!r}: expected an integer >= 1")
        # The block's own tags take ~10 tokens; below that no passage text would fit.
        if not isinstance(self.max_obs_length, int) or self.max_obs_length < 16:
            problems.append(f"agent.max_obs_length={self.max_obs_length!r}: expected an integer >= 16")
        if not isinstance(self.evidence_reward_weight, (int, float)) or self.evidence_reward_weight < 0:
            problems.append(f"agent.evidence_reward_weight={self.evidence_reward_weight!r}: expected a number >= 0")
        if self.guide_file is not None and not Path(self.guide_file).is_file():
            problems.append(f"agent.guide_file={self.guide_file!r}: no such file")
        if not isinstance(self.unseen_passages, bool):
            problems.append(f"agent.unseen_passages={self.unseen_passages!r}: expected true or false")
        if not isinstance(self.query_delimiter, str) or not self.query_delimiter:
            problems.append(f"agent.query_delimiter={self.query_delimiter!r}: expected a non-empty string")
        if isinstance(self.max_start_length, int) and isinstance(self.max_prompt_length, int) \
                and self.max_start_length > self.max_prompt_length:
            problems.append(f"data.max_start_length={self.max_start_length} exceeds "
                            f"data.max_prompt_length={self.max_prompt_length}")
        if problems:
            raise ValueError("config: " + "; ".join(problems))

    @classmethod
    def from_config(cls, config) -> "AgentConfig":
        """From the trainer config: the `agent` node plus `data.max_{prompt,start,response}_length`.

        An unknown key under `agent` is an error (a typo would otherwise silently keep a default).
        """
        agent = dict(config.get("agent") or {})
        known = {f.name for f in fields(cls)} - set(_DATA_KEYS)
        unknown = sorted(set(agent) - known)
        if unknown:
            raise ValueError(f"config: unknown key(s) agent.{', agent.'.join(unknown)}; known: {sorted(known)}")
        data = config.data
        return cls(**{key: data[key] for key in _DATA_KEYS}, **agent)


_DATA_KEYS = ("max_prompt_length", "max_start_length", "max_response_length")


def _node(key: str) -> str:
    return "data" if key in _DATA_KEYS else "agent"
