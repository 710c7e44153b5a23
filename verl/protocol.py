"""DataProto: the one batch container passed between the trainer's stages and across Ray.

A DataProto holds three parts that always travel together:
- ``batch``: a ``tensordict.TensorDict`` of named tensors with ``batch_size == [B]``,
- ``non_tensor_batch``: named ``np.ndarray`` whose first dimension is B (strings, dicts, ragged
  lists: anything per row that is not a tensor),
- ``meta_info``: a plain dict for the whole batch (generation settings, metrics, ...).

It behaves as veRL's ``verl.protocol.DataProto`` (the same names, arguments and results), so
code written for veRL runs unchanged; where the two differ on purpose docs/architecture.md
("verl.protocol.DataProto") says so and why.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tensordict import TensorDict

__all__ = [
    "DataProto",
    "DataProtoConfig",
    "DataProtoError",
    "DataProtoItem",
    "fold_batch_dim",
    "pad_dataproto_to_divisor",
    "unfold_batch_dim",
    "union_tensor_dict",
    "unpad_dataproto",
]

AUTO_PADDING_KEY = "_verl_auto_padding"  # veRL's meta_info flag, set by from_dict(auto_padding=True)


class DataProtoError(ValueError, AssertionError):
    """A broken DataProto contract (row counts, conflicting keys, uneven chunks).

    Also an AssertionError because veRL checks these with ``assert`` and code written for it
    catches AssertionError; a ValueError for everyone else, and it survives ``python -O``.
    """


class DataProtoConfig:
    """Process-wide switches, as in veRL: ``DataProtoConfig.auto_padding = True``."""

    auto_padding = False  # also on when the environment sets VERL_AUTO_PADDING=1 (or TRUE)


def _same(x, y) -> bool:
    """Deep equality of row or meta values that may be tensors, arrays, NaN or containers of them."""
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape
                and torch.equal(x, y.to(x.device)))
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)) or x.shape != y.shape:
            return False
        if x.dtype != object and y.dtype != object:
            return np.array_equal(x, y, equal_nan=x.dtype.kind in "fc" and y.dtype.kind in "fc")
        return all(_same(a, b) for a, b in zip(x.flat, y.flat))
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    return bool(x == y)


def _rows_of(key: str, value) -> int:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"batch[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() == 0:
        raise DataProtoError(f"batch[{key!r}] is a 0-dim tensor; rows need a leading dimension")
    return value.shape[0]


def _as_tensordict(batch, non_tensor_batch: dict) -> TensorDict:
    """``batch`` as a TensorDict of batch_size [B]; a plain dict names the first key that breaks it.

    A TensorDict without keys holds no rows of its own, so it takes the non-tensor row count.
    """
    if isinstance(batch, TensorDict) and (len(batch.keys()) or not non_tensor_batch):
        return batch
    tensors = {} if batch is None or isinstance(batch, TensorDict) else dict(batch)
    rows = None
    for key, value in tensors.items():
        n = _rows_of(key, value)
        if rows is None:
            rows, first = n, key
        elif n != rows:
            raise DataProtoError(f"batch[{key!r}] has {n} rows but batch[{first!r}] has {rows}")
    if rows is None:
        first_column = next(iter(non_tensor_batch.values()), None)
        rows = len(first_column) if isinstance(first_column, np.ndarray) and first_column.ndim else 0
    return TensorDict(tensors, batch_size=[rows])


def _as_object_array(key: str, values) -> np.ndarray:
    """A 1-D object array of ``values``, one element per row.

    Filled element by element, so a list of equal-length lists stays 1-D (``np.array`` would
    turn it into a 2-D array, and a row would read back as an array instead of the list).
    """
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise TypeError(f"non_tensor_batch[{key!r}] must be a sequence of rows, got {type(values).__name__}")
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _gather_meta(metas: list[dict]) -> dict:
    """meta_info of concatenated parts, as veRL merges the outputs of its workers.

    ``metrics`` of every part (a dict, or a list of dicts) are gathered into one dict of lists,
    ``{name: [part0's value, part1's value, ...]}``; any other key must be equal wherever it
    appears, and the union of the keys is kept.
    """
    merged, gathered = {}, None
    for meta in metas:
        for key, value in meta.items():
            if key == "metrics":
                if value is not None:
                    gathered = (gathered or []) + (list(value) if isinstance(value, list) else [value])
            elif key not in merged:
                merged[key] = value
            elif not _same(merged[key], value):
                raise DataProtoError(f"Conflicting values for meta_info key {key!r}")
    if gathered is not None:
        lists: dict[str, list] = {}
        for metrics in gathered:
            for name, value in metrics.items():
                lists.setdefault(name, []).append(value)
        merged["metrics"] = lists
    return merged


@dataclass
class DataProtoItem:
    """One row, ``d[i]`` (as in veRL): ``batch`` is a TensorDict of batch_size [], the non-tensor
    values are the row's own elements, and ``meta_info`` is shared with the DataProto."""

    batch: TensorDict | None = None
    non_tensor_batch: dict = field(default_factory=dict)
    meta_info: dict = field(default_factory=dict)


@dataclass(eq=False)  # identity equality: comparing tensors element-wise is ambiguous
class DataProto:
    """A batch of rows: tensors, per-row Python objects and batch-wide meta information.

    Invariant (checked on construction): ``batch`` is a TensorDict with batch_size ``[len(self)]``
    (empty of keys when there are no tensors; a plain dict of tensors is converted); every value
    in ``non_tensor_batch`` is an ``np.ndarray`` with ``len(self)`` rows in dimension 0.
    ``None`` parts become empty.
    """

    batch: TensorDict | None = None
    non_tensor_batch: dict[str, np.ndarray] | None = None
    meta_info: dict | None = None

    def __post_init__(self) -> None:
        self.non_tensor_batch = {} if self.non_tensor_batch is None else self.non_tensor_batch
        self.meta_info = {} if self.meta_info is None else self.meta_info
        self.batch = _as_tensordict(self.batch, self.non_tensor_batch)
        self.check_consistency()

    # ------------------------------------------------------------------ construction / checks

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor] | None = None, non_tensors: dict | None = None,
                  meta_info: dict | None = None, num_batch_dims: int = 1, auto_padding: bool = False) -> DataProto:
        """Build from plain dicts. Non-tensor arrays are kept as given; lists and tuples become 1-D
        object arrays. ``auto_padding`` lets this DataProto chunk unevenly (see ``chunk``)."""
        if num_batch_dims != 1:
            raise DataProtoError(f"only num_batch_dims=1 is supported, got {num_batch_dims}")
        non_tensors = {k: v if isinstance(v, np.ndarray) else _as_object_array(k, v)
                       for k, v in (non_tensors or {}).items()}
        meta_info = {} if meta_info is None else meta_info
        if auto_padding:
            meta_info[AUTO_PADDING_KEY] = True
        return cls(batch=dict(tensors or {}), non_tensor_batch=non_tensors, meta_info=meta_info)

    @classmethod
    def from_single_dict(cls, data: dict, meta_info: dict | None = None, auto_padding: bool = False) -> DataProto:
        """One dict of tensors and ``np.ndarray`` columns, sorted into the two parts by type."""
        tensors, non_tensors = {}, {}
        for key, value in data.items():
            if isinstance(value, torch.Tensor):
                tensors[key] = value
            elif isinstance(value, np.ndarray):
                non_tensors[key] = value
            else:
                raise ValueError(f"{key!r} must be a torch.Tensor or np.ndarray, got {type(value).__name__}")
        return cls.from_dict(tensors, non_tensors, meta_info, auto_padding=auto_padding)

    def check_consistency(self) -> None:
        """Raise naming the first part that breaks the invariant of the class docstring."""
        if not isinstance(self.batch, TensorDict):
            raise TypeError(f"batch must be a TensorDict or a dict of tensors, got {type(self.batch).__name__}")
        if self.batch.batch_dims != 1:
            raise DataProtoError(f"batch must have one batch dimension, got batch_size {list(self.batch.batch_size)}")
        rows = self.batch.batch_size[0]
        for key, value in self.non_tensor_batch.items():
            if not isinstance(value, np.ndarray) or value.ndim == 0:
                desc = f"0-dim array of {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
                raise TypeError(f"non_tensor_batch[{key!r}] must be an np.ndarray with a row dimension, got {desc}")
            if len(value) != rows:
                raise DataProtoError(f"non_tensor_batch[{key!r}] has {len(value)} rows but batch has {rows}")
        if not isinstance(self.meta_info, dict):
            raise TypeError(f"meta_info must be a dict, got {type(self.meta_info).__name__}")

    def __len__(self) -> int:
        return self.batch.batch_size[0]

    def is_padding_enabled(self) -> bool:
        """Whether ``chunk`` may split unevenly: set per DataProto, process-wide or by environment."""
        from_env = os.environ.get("VERL_AUTO_PADDING", "").upper() in ("1", "TRUE")
        return bool(self.meta_info.get(AUTO_PADDING_KEY, False)) or DataProtoConfig.auto_padding or from_env

    # ------------------------------------------------------------------ indexing

    def __getitem__(self, index):
        """``d[i]`` is a DataProtoItem (one row, no row dimension); a slice, an integer
        list/array/tensor or a boolean mask gives a DataProto. ``meta_info`` is shared."""
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"row {index} out of range for DataProto of length {n}")
            return DataProtoItem(self.batch[int(index)], {k: v[index] for k, v in self.non_tensor_batch.items()},
                                 self.meta_info)
        if isinstance(index, slice):
            return type(self)(self.batch[index], {k: v[index] for k, v in self.non_tensor_batch.items()},
                              self.meta_info)
        if isinstance(index, (list, np.ndarray, torch.Tensor)):
            return self.select_idxs(index)
        raise TypeError(f"indexing a DataProto with {type(index).__name__} is not supported")

    def select_idxs(self, idxs) -> DataProto:
        """Rows by an integer list/array/tensor (any order, repeats allowed) or a boolean mask."""
        idx = idxs.detach().cpu() if isinstance(idxs, torch.Tensor) else torch.as_tensor(np.asarray(idxs))
        if idx.numel() == 0:
            idx = idx.long()  # np.asarray([]) is float64
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {tuple(idx.shape)} for DataProto of length {len(self)}")
            idx = idx.nonzero().flatten()
        if idx.dim() != 1 or idx.is_floating_point():
            raise IndexError(f"index must be a 1-D integer or boolean array, got {idx.dtype} {tuple(idx.shape)}")
        idx = idx.long()
        np_idx = idx.numpy()
        return type(self)(self.batch[idx], {k: v[np_idx] for k, v in self.non_tensor_batch.items()}, self.meta_info)

    def select(self, batch_keys=None, non_tensor_batch_keys=None, meta_info_keys=None,
               deepcopy: bool = False) -> DataProto:
        """Some keys of each part (``None`` keeps all of it). New containers, shared tensors.

        As in veRL a missing tensor key raises KeyError while missing non-tensor and meta keys
        are skipped; ``deepcopy`` copies the non-tensor and meta values.
        """
        batch = self.batch.copy() if batch_keys is None else self.batch.select(*batch_keys)
        non_tensor = {k: v for k, v in self.non_tensor_batch.items()
                      if non_tensor_batch_keys is None or k in non_tensor_batch_keys}
        meta = {k: v for k, v in self.meta_info.items() if meta_info_keys is None or k in meta_info_keys}
        if deepcopy:
            non_tensor, meta = copy.deepcopy(non_tensor), copy.deepcopy(meta)
        return type(self)(batch, non_tensor, meta)

    def pop(self, batch_keys=None, non_tensor_batch_keys=None, meta_info_keys=None) -> DataProto:
        """Remove the given keys from ``self`` and return them (``None`` pops nothing of a part)."""
        for part, keys, name in ((self.batch.keys(), batch_keys, "batch"),
                                 (self.non_tensor_batch, non_tensor_batch_keys, "non_tensor_batch"),
                                 (self.meta_info, meta_info_keys, "meta_info")):
            missing = [k for k in keys or () if k not in part]
            if missing:  # checked first, so a failed pop removes nothing
                raise KeyError(f"{name} has no key(s) {missing}")
        tensors = {k: self.batch.pop(k) for k in batch_keys or ()}
        non_tensor = {k: self.non_tensor_batch.pop(k) for k in non_tensor_batch_keys or ()}
        meta = {k: self.meta_info.pop(k) for k in meta_info_keys or ()}
        return type(self).from_dict(tensors, non_tensor, meta)

    def union(self, other: DataProto) -> DataProto:
        """Merge ``other``'s keys into ``self`` (in place, returns ``self``).

        Both must have the same rows; a key present in both must hold equal values, otherwise a
        DataProtoError names it. A DataProto with only meta_info has no rows and merges with any.
        """
        if _has_rows(self) and _has_rows(other) and len(self) != len(other):
            raise DataProtoError(f"union of DataProtos with {len(self)} and {len(other)} rows")
        if not _has_rows(self):
            self.batch = TensorDict({}, batch_size=other.batch.batch_size, device=other.batch.device)
        if _has_rows(other):
            union_tensor_dict(self.batch, other.batch)
        for name, mine, theirs in (("non_tensor_batch", self.non_tensor_batch, other.non_tensor_batch),
                                   ("meta_info", self.meta_info, other.meta_info)):
            for key, value in theirs.items():
                if key in mine and not _same(mine[key], value):
                    raise DataProtoError(f"union conflict: {name}[{key!r}] differs between the two DataProtos")
            mine.update(theirs)
        return self

    # ------------------------------------------------------------------ combining and splitting

    @staticmethod
    def concat(data: list[DataProto]) -> DataProto:
        """Rows of all parts in order (all need the same keys); meta_info as ``_gather_meta``."""
        if not data:
            raise DataProtoError("concat of an empty list")
        first = data[0]
        for i, d in enumerate(data[1:], start=1):
            for name, mine, theirs in (("batch", set(first.batch.keys()), set(d.batch.keys())),
                                       ("non_tensor_batch", set(first.non_tensor_batch), set(d.non_tensor_batch))):
                if mine != theirs:
                    raise DataProtoError(f"concat: part {i} differs from part 0 in {name} keys {sorted(mine ^ theirs)}")
        batch = torch.cat([d.batch for d in data], dim=0)
        non_tensor = {k: np.concatenate([d.non_tensor_batch[k] for d in data]) for k in first.non_tensor_batch}
        return type(first)(batch, non_tensor, _gather_meta([d.meta_info for d in data]))

    def chunk(self, chunks: int) -> list[DataProto]:
        """``chunks`` consecutive parts sharing meta_info.

        The length must divide, as in veRL, unless padding is enabled (``is_padding_enabled``);
        then the parts differ by at most one row, the longer ones first.
        """
        n = len(self)
        if chunks <= 0:
            raise DataProtoError(f"chunks must be positive, got {chunks}")
        if n % chunks and not self.is_padding_enabled():
            raise DataProtoError(f"only support equal chunk: cannot chunk {n} rows into {chunks} equal parts "
                                 "(pad first with pad_dataproto_to_divisor, or enable auto padding)")
        ends = np.cumsum([n // chunks + (i < n % chunks) for i in range(chunks)])
        return [self[int(end - size):int(end)] for end, size in zip(ends, np.diff(ends, prepend=0))]

    def split(self, split_size: int) -> list[DataProto]:
        """Consecutive parts of ``split_size`` rows; the last may be shorter."""
        if split_size <= 0:
            raise DataProtoError(f"split_size must be positive, got {split_size}")
        return [self[i : i + split_size] for i in range(0, len(self), split_size)]

    def repeat(self, repeat_times: int = 2, interleave: bool = True) -> DataProto:
        """Each row ``repeat_times`` times: ``[a, a, b, b]`` when interleaved, ``[a, b, a, b]`` when tiled.

        Interleaving keeps the samples of one prompt adjacent, which GRPO grouping and
        world-size chunking rely on.
        """
        rows = np.arange(len(self))
        return self.select_idxs(np.repeat(rows, repeat_times) if interleave else np.tile(rows, repeat_times))

    def reorder(self, indices) -> None:
        """Permute the rows in place: row i becomes old row ``indices[i]`` (meta_info untouched)."""
        reordered = self.select_idxs(indices)
        self.batch, self.non_tensor_batch = reordered.batch, reordered.non_tensor_batch

    def to(self, device: str | torch.device) -> DataProto:
        """Move every tensor to ``device`` in place; returns ``self``."""
        self.batch = self.batch.to(device)
        return self

    def save_to_disk(self, filepath) -> None:
        """Pickle to ``filepath`` (veRL's format; load only files you trust)."""
        with open(filepath, "wb") as f:
            pickle.dump(self, f)

    @staticmethod
    def load_from_disk(filepath) -> DataProto:
        with open(filepath, "rb") as f:
            return pickle.load(f)


def _has_rows(data: DataProto) -> bool:
    return bool(len(data.batch.keys()) or data.non_tensor_batch)


def union_tensor_dict(tensor_dict1: TensorDict, tensor_dict2: TensorDict) -> TensorDict:
    """Add ``tensor_dict2``'s keys to ``tensor_dict1`` in place and return it; shared keys must hold equal tensors."""
    if tensor_dict1.batch_size != tensor_dict2.batch_size:
        raise DataProtoError(f"union of TensorDicts with batch_size {list(tensor_dict1.batch_size)} "
                             f"and {list(tensor_dict2.batch_size)}")
    for key, value in tensor_dict2.items():
        if key in tensor_dict1.keys():
            if not _same(tensor_dict1[key], value):
                raise DataProtoError(f"union conflict: batch[{key!r}] differs between the two DataProtos")
        else:
            tensor_dict1[key] = value
    return tensor_dict1


def pad_dataproto_to_divisor(data: DataProto, size_divisor: int) -> tuple[DataProto, int]:
    """Append copies of the leading rows (cycling) until ``len`` is a multiple of ``size_divisor``.

    Returns ``(padded, pad_size)``; ``unpad_dataproto(padded, pad_size)`` undoes it. Repeating
    real rows (rather than zeros) keeps padded rows valid inputs for every worker; meta_info is
    shared, not merged (so its metrics are not gathered as ``concat`` would).
    """
    if size_divisor <= 0:
        raise DataProtoError(f"size_divisor must be positive, got {size_divisor}")
    n = len(data)
    pad_size = (-n) % size_divisor
    if pad_size == 0:
        return data, 0
    return data.select_idxs(np.concatenate([np.arange(n), np.arange(pad_size) % n])), pad_size


def unpad_dataproto(data: DataProto, pad_size: int) -> DataProto:
    """Drop the last ``pad_size`` rows added by pad_dataproto_to_divisor."""
    if pad_size == 0:
        return data
    return data[: len(data) - pad_size]


def fold_batch_dim(data: DataProto, new_batch_size: int) -> DataProto:
    """Rows ``[B, ...]`` regrouped as ``[new_batch_size, B // new_batch_size, ...]`` (consecutive
    rows go together, e.g. the n samples of one prompt after ``repeat``); undone by unfold_batch_dim."""
    n = len(data)
    if new_batch_size <= 0 or n % new_batch_size:
        raise DataProtoError(f"cannot fold {n} rows into {new_batch_size} groups")
    tensors = {k: v.reshape(new_batch_size, -1, *v.shape[1:]) for k, v in data.batch.items()}
    non_tensor = {k: v.reshape(new_batch_size, -1, *v.shape[1:]) for k, v in data.non_tensor_batch.items()}
    batch = TensorDict(tensors, batch_size=[new_batch_size], device=data.batch.device)
    return type(data)(batch, non_tensor, data.meta_info)


def unfold_batch_dim(data: DataProto, batch_dims: int = 2) -> DataProto:
    """The first ``batch_dims`` dimensions of every tensor and array flattened into one row dimension."""
    columns = [*data.batch.values(), *data.non_tensor_batch.values()]
    rows = math.prod(columns[0].shape[:batch_dims]) if columns else 0
    tensors = {k: v.reshape(rows, *v.shape[batch_dims:]) for k, v in data.batch.items()}
    non_tensor = {k: v.reshape(rows, *v.shape[batch_dims:]) for k, v in data.non_tensor_batch.items()}
    batch = TensorDict(tensors, batch_size=[rows], device=data.batch.device)
    return type(data)(batch, non_tensor, data.meta_info)
