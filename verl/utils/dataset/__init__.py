from verl.utils.dataset.rl_dataset import RLHFDataset, StatefulLoader

__all__ = ["RLHFDataset", "StatefulLoader"]
