"""The SFT stage's data: agent trajectories from successful rollouts, whole or cut per step."""
from rag_r1.sft.build_from_rollouts import build, cut_conversations, cut_trajectory, split_response

__all__ = ["build", "cut_conversations", "cut_trajectory", "split_response"]
