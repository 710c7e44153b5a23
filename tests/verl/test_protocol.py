import pickle

import numpy as np
import pytest
import torch

from verl.protocol import DataProto, pad_dataproto_to_divisor, unpad_dataproto


def make(n: int = 4) -> DataProto:
    """Row i holds ids [i, 10 + i], mask [1, 0] and uid "p{i}"."""
    ids = torch.stack([torch.arange(n), 10 + torch.arange(n)], dim=1)
    mask = torch.tensor([[1, 0]] * n)
    return DataProto.from_dict(
        {"input_ids": ids, "attention_mask": mask},
        {"uid": [f"p{i}" for i in range(n)], "reward_model": [{"ground_truth": str(i)} for i in range(n)]},
        {"temperature": 1.0},
    )


def assert_same(a: DataProto, b: DataProto) -> None:
    assert a.batch.keys() == b.batch.keys()
    for k in a.batch:
        assert torch.equal(a.batch[k], b.batch[k]), k
    assert a.non_tensor_batch.keys() == b.non_tensor_batch.keys()
    for k in a.non_tensor_batch:
        assert a.non_tensor_batch[k].dtype == object
        assert list(a.non_tensor_batch[k]) == list(b.non_tensor_batch[k]), k
    assert a.meta_info == b.meta_info


def test_from_dict_builds_1d_object_arrays_even_from_lists_of_lists():
    d = DataProto.from_dict({"x": torch.zeros(2, 3)}, {"retrieved_ids": [["a", "b"], ["c", "d"]]})
    arr = d.non_tensor_batch["retrieved_ids"]
    assert arr.dtype == object and arr.shape == (2,)
    assert arr[1] == ["c", "d"]
    assert len(d) == 2
    assert DataProto().batch == {} and len(DataProto()) == 0


def test_validation_names_the_offending_key():
    with pytest.raises(ValueError, match="'b'"):
        DataProto({"a": torch.zeros(3), "b": torch.zeros(2)})
    with pytest.raises(ValueError, match="'uid'"):
        DataProto.from_dict({"a": torch.zeros(3)}, {"uid": ["x", "y"]})
    with pytest.raises(TypeError, match="'uid'"):
        DataProto({"a": torch.zeros(2)}, {"uid": np.array(["x", "y"])})  # str dtype, not object
    with pytest.raises(ValueError, match="'s'"):
        DataProto({"s": torch.tensor(1.0)})
    with pytest.raises(TypeError, match="'l'"):
        DataProto({"l": [1, 2]})


def test_slicing_and_index_arrays_keep_all_parts():
    d = make(4)
    s = d[1:3]
    assert s.batch["input_ids"].tolist() == [[1, 11], [2, 12]]
    assert list(s.non_tensor_batch["uid"]) == ["p1", "p2"]
    assert s.meta_info is d.meta_info  # shared, per the contract
    picked = d[np.array([3, 0])]
    assert picked.batch["input_ids"][:, 0].tolist() == [3, 0]
    assert list(picked.non_tensor_batch["uid"]) == ["p3", "p0"]
    assert list(d[[2]].non_tensor_batch["uid"]) == ["p2"]
    assert list(d[torch.tensor([1, 1])].non_tensor_batch["uid"]) == ["p1", "p1"]
    masked = d[torch.tensor([True, False, False, True])]
    assert list(masked.non_tensor_batch["uid"]) == ["p0", "p3"]
    assert list(d[-1].non_tensor_batch["uid"]) == ["p3"] and len(d[-1]) == 1
    assert len(d[[]]) == 0 and list(d[[]].batch["input_ids"].shape) == [0, 2]
    with pytest.raises(IndexError):
        d[4]


def test_select_and_pop():
    d = make(2)
    s = d.select(batch_keys=["input_ids"], non_tensor_batch_keys=["uid"])
    assert list(s.batch) == ["input_ids"] and list(s.non_tensor_batch) == ["uid"]
    assert s.meta_info == {"temperature": 1.0}
    assert set(d.batch) == {"input_ids", "attention_mask"}  # select leaves d untouched
    with pytest.raises(KeyError, match="values"):
        d.select(batch_keys=["values"])

    popped = d.pop(batch_keys=["attention_mask"], non_tensor_batch_keys=["reward_model"])
    assert list(popped.batch) == ["attention_mask"] and list(popped.non_tensor_batch) == ["reward_model"]
    assert list(d.batch) == ["input_ids"] and list(d.non_tensor_batch) == ["uid"]
    with pytest.raises(KeyError, match="'nope'"):
        d.pop(batch_keys=["input_ids", "nope"])
    assert "input_ids" in d.batch  # a failed pop removes nothing


def test_union_merges_and_rejects_conflicts():
    d = make(2)
    extra = DataProto.from_dict(
        {"input_ids": d.batch["input_ids"].clone(), "values": torch.ones(2, 2)},
        {"uid": ["p0", "p1"]},
        {"temperature": 1.0, "step": 3},
    )
    out = d.union(extra)
    assert out is d
    assert set(d.batch) == {"input_ids", "attention_mask", "values"}
    assert d.meta_info == {"temperature": 1.0, "step": 3}

    with pytest.raises(ValueError, match="'values'"):
        d.union(DataProto({"values": torch.zeros(2, 2)}))
    with pytest.raises(ValueError, match="'uid'"):
        d.union(DataProto.from_dict(non_tensors={"uid": ["p0", "other"]}))
    with pytest.raises(ValueError, match="'temperature'"):
        d.union(DataProto(meta_info={"temperature": 0.5}))
    with pytest.raises(ValueError, match="3 rows"):
        d.union(make(3).select(batch_keys=["attention_mask"]))


def test_chunk_then_concat_is_identity():
    d = make(6)
    parts = d.chunk(3)
    assert [len(p) for p in parts] == [2, 2, 2]
    assert_same(DataProto.concat(parts), d)
    with pytest.raises(ValueError, match="6 rows into 4"):
        d.chunk(4)
    with pytest.raises(ValueError, match="values"):
        DataProto.concat([d[:1], d[1:2].union(DataProto({"values": torch.zeros(1)}))])


def test_split_last_part_shorter_and_concat_identity():
    d = make(5)
    parts = d.split(2)
    assert [len(p) for p in parts] == [2, 2, 1]
    assert_same(DataProto.concat(parts), d)


def test_repeat_interleave_and_tiled_order():
    d = make(2)
    inter = d.repeat(3, interleave=True)
    # rows a, b -> a a a b b b
    assert inter.batch["input_ids"][:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert list(inter.non_tensor_batch["uid"]) == ["p0", "p0", "p0", "p1", "p1", "p1"]
    tiled = d.repeat(2, interleave=False)
    # rows a, b -> a b a b, the second dimension untouched
    assert tiled.batch["input_ids"].tolist() == [[0, 10], [1, 11], [0, 10], [1, 11]]
    assert list(tiled.non_tensor_batch["uid"]) == ["p0", "p1", "p0", "p1"]


def test_pad_repeats_leading_rows_and_unpad_is_identity():
    d = make(3)
    padded, pad = pad_dataproto_to_divisor(d, 4)
    assert pad == 1 and len(padded) == 4
    assert list(padded.non_tensor_batch["uid"]) == ["p0", "p1", "p2", "p0"]
    assert_same(unpad_dataproto(padded, pad), d)

    # more padding than rows cycles through them: 2 rows to a multiple of 5 -> 2 + 3
    padded, pad = pad_dataproto_to_divisor(make(2), 5)
    assert pad == 3
    assert list(padded.non_tensor_batch["uid"]) == ["p0", "p1", "p0", "p1", "p0"]

    same, pad = pad_dataproto_to_divisor(d, 3)
    assert pad == 0 and same is d
    assert unpad_dataproto(d, 0) is d


def test_pickle_round_trip_and_to_device():
    d = make(3)
    back = pickle.loads(pickle.dumps(d))
    assert_same(back, d)
    moved = d.to("cpu")
    assert moved is d and d.batch["input_ids"].device.type == "cpu"
