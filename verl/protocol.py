"""DataProto: the one batch container passed between the trainer's stages and across Ray.

A DataProto holds three parts that always travel together:
- ``batch``: named tensors sharing the leading (row) dimension,
- ``non_tensor_batch``: named 1-D ``np.ndarray(dtype=object)`` of the same length
  (strings, dicts, ragged lists: anything per row that is not a tensor),
- ``meta_info``: a plain dict for the whole batch (generation settings, metrics, ...).

The contract is in docs/architecture.md ("verl.protocol.DataProto"). Unlike veRL's version this
uses a plain ``dict`` rather than a TensorDict, so it pickles with nothing but torch and numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["DataProto", "pad_dataproto_to_divisor", "unpad_dataproto"]


def _as_object_array(key: str, values) -> np.ndarray:
    """A 1-D object array of ``values``, one element per row.

    Filled element by element, so a list of equal-length lists stays 1-D (``np.array`` would
    turn it into a 2-D array).
    """
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise ValueError(f"non_tensor_batch[{key!r}] must be 1-D, got shape {values.shape}")
    if not isinstance(values, (np.ndarray, Sequence)) or isinstance(values, (str, bytes)):
        raise TypeError(f"non_tensor_batch[{key!r}] must be a sequence of rows, got {type(values).__name__}")
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _rows_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Element-wise equality of two object arrays whose elements may themselves be arrays/tensors."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x is y:
            continue
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)):
                return False
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _values_equal(x, y) -> bool:
    """Equality for meta_info values, which may be tensors or arrays."""
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x.shape == y.shape and torch.equal(x, y)
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return np.array_equal(x, y)
    return x == y


@dataclass(eq=False)  # identity equality: comparing dicts of tensors element-wise is ambiguous
class DataProto:
    """A batch of rows: tensors, per-row Python objects and batch-wide meta information.

    Invariant (checked on construction): every tensor in ``batch`` has at least one dimension
    and the same size ``len(self)`` in dimension 0; every value in ``non_tensor_batch`` is a
    1-D ``np.ndarray(dtype=object)`` of that same length. ``None`` parts become empty dicts.
    """

    batch: dict[str, torch.Tensor] | None = None
    non_tensor_batch: dict[str, np.ndarray] | None = None
    meta_info: dict | None = field(default=None)

    def __post_init__(self) -> None:
        self.batch = {} if self.batch is None else dict(self.batch)
        self.non_tensor_batch = {} if self.non_tensor_batch is None else dict(self.non_tensor_batch)
        self.meta_info = {} if self.meta_info is None else self.meta_info
        self.check_consistency()

    # ------------------------------------------------------------------ construction / checks

    @classmethod
    def from_dict(
        cls,
        tensors: dict[str, torch.Tensor] | None = None,
        non_tensors: dict | None = None,
        meta_info: dict | None = None,
    ) -> DataProto:
        """Build from plain dicts; non-tensor values may be lists/tuples/arrays and become 1-D object arrays."""
        non_tensors = non_tensors or {}
        converted = {k: _as_object_array(k, v) for k, v in non_tensors.items()}
        return cls(batch=tensors, non_tensor_batch=converted, meta_info=meta_info)

    def check_consistency(self) -> None:
        """Raise naming the first key that breaks the invariant of the class docstring."""
        n = None
        for key, value in self.batch.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"batch[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
            if value.dim() == 0:
                raise ValueError(f"batch[{key!r}] is a 0-dim tensor; rows need a leading dimension")
            if n is None:
                n, first = value.shape[0], key
            elif value.shape[0] != n:
                raise ValueError(f"batch[{key!r}] has {value.shape[0]} rows but batch[{first!r}] has {n}")
        for key, value in self.non_tensor_batch.items():
            if not isinstance(value, np.ndarray) or value.dtype != object or value.ndim != 1:
                if isinstance(value, np.ndarray):
                    desc = f"array of {value.dtype} with shape {value.shape}"
                else:
                    desc = type(value).__name__
                raise TypeError(f"non_tensor_batch[{key!r}] must be a 1-D np.ndarray(dtype=object), got {desc}")
            if n is None:
                n, first = len(value), key
            elif len(value) != n:
                raise ValueError(f"non_tensor_batch[{key!r}] has {len(value)} rows but {first!r} has {n}")
        if not isinstance(self.meta_info, dict):
            raise TypeError(f"meta_info must be a dict, got {type(self.meta_info).__name__}")

    def __len__(self) -> int:
        for value in self.batch.values():
            return value.shape[0]
        for value in self.non_tensor_batch.values():
            return len(value)
        return 0

    # ------------------------------------------------------------------ indexing

    def __getitem__(self, index) -> DataProto:
        """Rows by slice, integer array/list/tensor, or boolean mask; ``d[i]`` is ``d[i:i+1]``.

        An integer keeps the row dimension (unlike veRL's DataProtoItem) so every DataProto
        obeys the same invariant. ``meta_info`` is shared with ``self``, not copied.
        """
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"row {index} out of range for DataProto of length {n}")
            index = slice(int(index) % n, int(index) % n + 1)
        if isinstance(index, slice):
            batch = {k: v[index] for k, v in self.batch.items()}
            non_tensor = {k: v[index] for k, v in self.non_tensor_batch.items()}
            return DataProto(batch, non_tensor, self.meta_info)
        idx = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index)
        if idx.numel() == 0:
            idx = idx.long()  # np.asarray([]) is float64
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {tuple(idx.shape)} for DataProto of length {len(self)}")
            idx = idx.nonzero().flatten()
        if idx.dim() != 1 or idx.is_floating_point():
            raise IndexError(f"index must be a 1-D integer or boolean array, got {idx.dtype} {tuple(idx.shape)}")
        idx = idx.long().cpu()
        np_idx = idx.numpy()
        batch = {k: v[idx.to(v.device)] for k, v in self.batch.items()}
        non_tensor = {k: v[np_idx] for k, v in self.non_tensor_batch.items()}
        return DataProto(batch, non_tensor, self.meta_info)

    def select(self, batch_keys=None, non_tensor_batch_keys=None, meta_info_keys=None) -> DataProto:
        """A view on some keys (``None`` keeps all of a part); tensors are shared, not copied."""
        batch = _pick(self.batch, batch_keys, "batch")
        non_tensor = _pick(self.non_tensor_batch, non_tensor_batch_keys, "non_tensor_batch")
        meta = _pick(self.meta_info, meta_info_keys, "meta_info")
        return DataProto(batch, non_tensor, meta)

    def pop(self, batch_keys=None, non_tensor_batch_keys=None, meta_info_keys=None) -> DataProto:
        """Remove the given keys from ``self`` and return them (``None`` pops nothing of a part, as in veRL)."""
        for part, keys, name in (
            (self.batch, batch_keys, "batch"),
            (self.non_tensor_batch, non_tensor_batch_keys, "non_tensor_batch"),
            (self.meta_info, meta_info_keys, "meta_info"),
        ):
            for key in keys or ():
                if key not in part:
                    raise KeyError(f"{name} has no key {key!r}")
        batch = {k: self.batch.pop(k) for k in batch_keys or ()}
        non_tensor = {k: self.non_tensor_batch.pop(k) for k in non_tensor_batch_keys or ()}
        meta = {k: self.meta_info.pop(k) for k in meta_info_keys or ()}
        return DataProto(batch, non_tensor, meta)

    def union(self, other: DataProto) -> DataProto:
        """Merge ``other``'s keys into ``self`` (in place, returns ``self``, as veRL does).

        Both must have the same length; a key present in both must hold equal values, otherwise
        a ValueError names it (silently keeping one of two different values hides bugs).
        """
        # A DataProto with only meta_info has no rows and merges with any length.
        if _has_rows(self) and _has_rows(other) and len(self) != len(other):
            raise ValueError(f"union of DataProtos with {len(self)} and {len(other)} rows")
        for key, value in other.batch.items():
            if key in self.batch:
                mine = self.batch[key]
                if mine.shape != value.shape or not torch.equal(mine, value.to(mine.device)):
                    raise ValueError(f"union conflict: batch[{key!r}] differs between the two DataProtos")
        for key, value in other.non_tensor_batch.items():
            if key in self.non_tensor_batch and not _rows_equal(self.non_tensor_batch[key], value):
                raise ValueError(f"union conflict: non_tensor_batch[{key!r}] differs between the two DataProtos")
        for key, value in other.meta_info.items():
            if key in self.meta_info and not _values_equal(self.meta_info[key], value):
                raise ValueError(f"union conflict: meta_info[{key!r}] differs between the two DataProtos")
        self.batch.update(other.batch)
        self.non_tensor_batch.update(other.non_tensor_batch)
        self.meta_info.update(other.meta_info)
        return self

    # ------------------------------------------------------------------ combining and splitting

    @staticmethod
    def concat(data: list[DataProto]) -> DataProto:
        """Rows of all parts in order; all parts need the same keys; meta_info is the first part's."""
        if not data:
            raise ValueError("concat of an empty list")
        first = data[0]
        for i, d in enumerate(data[1:], start=1):
            for name, mine, theirs in (
                ("batch", first.batch, d.batch),
                ("non_tensor_batch", first.non_tensor_batch, d.non_tensor_batch),
            ):
                if mine.keys() != theirs.keys():
                    diff = sorted(set(mine) ^ set(theirs))
                    raise ValueError(f"concat: part {i} differs from part 0 in {name} keys {diff}")
        batch = {k: torch.cat([d.batch[k] for d in data], dim=0) for k in first.batch}
        non_tensor = {k: np.concatenate([d.non_tensor_batch[k] for d in data]) for k in first.non_tensor_batch}
        return DataProto(batch, non_tensor, first.meta_info)

    def chunk(self, chunks: int) -> list[DataProto]:
        """``chunks`` equal parts; the length must divide (pad first with pad_dataproto_to_divisor)."""
        n = len(self)
        if chunks <= 0 or n % chunks != 0:
            raise ValueError(f"cannot chunk {n} rows into {chunks} equal parts")
        size = n // chunks
        return [self[i * size : (i + 1) * size] for i in range(chunks)]

    def split(self, split_size: int) -> list[DataProto]:
        """Consecutive parts of ``split_size`` rows; the last may be shorter."""
        if split_size <= 0:
            raise ValueError(f"split_size must be positive, got {split_size}")
        return [self[i : i + split_size] for i in range(0, len(self), split_size)]

    def repeat(self, repeat_times: int = 2, interleave: bool = True) -> DataProto:
        """Each row ``repeat_times`` times: ``[a, a, b, b]`` when interleaved, ``[a, b, a, b]`` when tiled.

        Interleaving keeps the samples of one prompt adjacent, which GRPO grouping and
        world-size chunking rely on.
        """
        if interleave:
            batch = {k: v.repeat_interleave(repeat_times, dim=0) for k, v in self.batch.items()}
            non_tensor = {k: np.repeat(v, repeat_times) for k, v in self.non_tensor_batch.items()}
        else:
            batch = {k: v.repeat(repeat_times, *([1] * (v.dim() - 1))) for k, v in self.batch.items()}
            non_tensor = {k: np.tile(v, repeat_times) for k, v in self.non_tensor_batch.items()}
        return DataProto(batch, non_tensor, self.meta_info)

    def to(self, device: str | torch.device) -> DataProto:
        """Move every tensor to ``device`` in place; returns ``self``."""
        self.batch = {k: v.to(device) for k, v in self.batch.items()}
        return self


def _has_rows(data: DataProto) -> bool:
    return bool(data.batch or data.non_tensor_batch)


def _pick(part: dict, keys, name: str) -> dict:
    if keys is None:
        return dict(part)
    missing = [k for k in keys if k not in part]
    if missing:
        raise KeyError(f"{name} has no key(s) {missing}")
    return {k: part[k] for k in keys}


def pad_dataproto_to_divisor(data: DataProto, size_divisor: int) -> tuple[DataProto, int]:
    """Append copies of the leading rows until ``len`` is a multiple of ``size_divisor``.

    Returns ``(padded, pad_size)``; ``unpad_dataproto(padded, pad_size)`` undoes it. Repeating
    real rows (rather than zeros) keeps padded rows valid inputs for every worker.
    """
    if size_divisor <= 0:
        raise ValueError(f"size_divisor must be positive, got {size_divisor}")
    n = len(data)
    pad_size = (-n) % size_divisor
    if pad_size == 0:
        return data, 0
    if n == 0:
        raise ValueError("cannot pad an empty DataProto")
    return DataProto.concat([data, data[np.arange(pad_size) % n]]), pad_size


def unpad_dataproto(data: DataProto, pad_size: int) -> DataProto:
    """Drop the last ``pad_size`` rows added by pad_dataproto_to_divisor."""
    if pad_size == 0:
        return data
    return data[: len(data) - pad_size]
