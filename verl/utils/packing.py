"""How a [B, P + R] batch (left-padded prompts, right-padded responses) is fed to the model.

Padded: the rows as they are, less the columns that are padding in every row
(torch_functional.trim_padding_columns). Packed (veRL's `model.use_remove_padding`): the attended
tokens of all rows in ONE row, each sequence's position ids restarting at 0, no attention mask and
no cache (`use_cache=False`: with a cache transformers does not look for packed sequences), so no
compute goes to padding. Transformers reads the sequence boundaries from the position ids (a
position that does not follow the one before starts a sequence): the mask-building attention
implementations (eager, sdpa, flex) then build a block-diagonal causal mask
(masking_utils.find_packed_sequence_indices), and flash attention runs its variable-length kernel
over the same boundaries (modeling_flash_attention_utils._is_packed_sequence), so each token
attends within its own sequence only, as in the padded batch.

Both layouts map to and from the positions that score the responses: the output at P + t - 1 is the
one that predicts (and values) response token t.
"""
from __future__ import annotations

import torch

from verl.utils.torch_functional import trim_padding_columns

# Attention implementations that see packed sequences in the position ids (transformers 5's
# masking_utils and flash-attention paths). Any other (a paged or a hub kernel) gets no mask from
# them and would let one sequence attend to the one packed before it.
PACKED_ATTENTION = ("eager", "sdpa", "flex_attention",
                    "flash_attention_2", "flash_attention_3", "flash_attention_4")


def attention_implementation(module: torch.nn.Module) -> str:
    """The attention implementation of the transformers model in `module` (itself or the first
    submodule that carries a model config, e.g. a value model's backbone)."""
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if hasattr(config, "_attn_implementation"):
            return config._attn_implementation
    raise ValueError(f"{type(module).__name__} holds no transformers model config")


def check_packable(module: torch.nn.Module, key: str) -> None:
    """Raise, naming the config `key`, unless the model separates packed sequences."""
    implementation = attention_implementation(module)
    if implementation not in PACKED_ATTENTION:
        raise ValueError(
            f"{key}=True is not supported with attn_implementation={implementation!r}: it builds no mask from "
            "packed position ids, so packed sequences would attend to each other; "
            f"supported: {', '.join(PACKED_ATTENTION)}")


class _Layout:
    """Maps between the batch's [B, P + R] positions and the model input's."""

    inputs: dict  # input_ids, attention_mask, position_ids as the model takes them

    def __init__(self, batch: dict, response_length: int):
        self.prompt_length = batch["input_ids"].shape[1] - response_length
        self.response_length = response_length

    def to_model(self, full_BT: torch.Tensor) -> torch.Tensor:
        """[B, P + R] -> the model input's layout."""
        raise NotImplementedError

    def from_model(self, model_output: torch.Tensor) -> torch.Tensor:
        """Per-position model outputs -> [B, P + R], 0 where the model saw no token."""
        raise NotImplementedError

    def scoring_positions(self, response_BR: torch.Tensor) -> torch.Tensor:
        """[B, R] values of the response tokens -> the model layout, each at the position whose
        output predicts its token (P + t - 1), 0/False elsewhere."""
        full = response_BR.new_zeros(response_BR.shape[0], self.prompt_length + self.response_length)
        full[:, self.prompt_length - 1:-1] = response_BR
        return self.to_model(full)

    def at_scoring_positions(self, model_output: torch.Tensor) -> torch.Tensor:
        """The model's per-position outputs -> [B, R]: the output at P + t - 1 for response token t."""
        return self.from_model(model_output)[:, self.prompt_length - 1:-1]


class PaddedLayout(_Layout):
    """The batch's rows [B, T'], without the columns that are padding in every row."""

    def __init__(self, batch: dict, response_length: int):
        super().__init__(batch, response_length)
        self.inputs, kept = trim_padding_columns(batch, response_length)
        stop = self.prompt_length + kept
        self.columns = slice(stop - self.inputs["input_ids"].shape[1], stop)

    def to_model(self, full_BT: torch.Tensor) -> torch.Tensor:
        return full_BT[:, self.columns]

    def from_model(self, model_output: torch.Tensor) -> torch.Tensor:
        full = model_output.new_zeros(model_output.shape[0], self.prompt_length + self.response_length)
        full[:, self.columns] = model_output
        return full


class PackedLayout(_Layout):
    """The attended tokens of every row, row after row, as one row [1, N], with no attention mask."""

    def __init__(self, batch: dict, response_length: int):
        super().__init__(batch, response_length)
        self.attended = batch["attention_mask"].bool()
        positions = batch["position_ids"][self.attended]
        # what transformers reads the sequence boundaries from: 0, 1, ... over each row's tokens
        if not torch.equal(positions, (self.attended.cumsum(-1) - 1)[self.attended]):
            raise ValueError("packed sequences need position ids 0, 1, 2, ... over the attended tokens of each row")
        self.inputs = {"input_ids": batch["input_ids"][self.attended][None], "attention_mask": None,
                       "position_ids": positions[None]}

    def to_model(self, full_BT: torch.Tensor) -> torch.Tensor:
        return full_BT[self.attended][None]

    def from_model(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output.new_zeros(self.attended.shape).masked_scatter(self.attended, model_output[0])


def model_layout(batch: dict, response_length: int, packed: bool) -> _Layout:
    """The layout the model runs the batch in: PackedLayout when `packed`, else PaddedLayout."""
    return PackedLayout(batch, response_length) if packed else PaddedLayout(batch, response_length)
