"""veRL-compatible PPO trainer; ``from verl import DataProto`` as in veRL."""
from verl.protocol import DataProto

__all__ = ["DataProto"]
