import pickle

import numpy as np
import pytest
import torch
from tensordict import TensorDict

import verl
from verl.protocol import (
    DataProto,
    DataProtoConfig,
    DataProtoError,
    DataProtoItem,
    fold_batch_dim,
    pad_dataproto_to_divisor,
    unfold_batch_dim,
    union_tensor_dict,
    unpad_dataproto,
)


def make(n: int = 4) -> DataProto:
    """Row i holds ids [i, 10 + i], mask [1, 0] and uid "p{i}"."""
    ids = torch.stack([torch.arange(n), 10 + torch.arange(n)], dim=1)
    mask = torch.tensor([[1, 0]] * n)
    return DataProto.from_dict(
        {"input_ids": ids, "attention_mask": mask},
        {"uid": [f"p{i}" for i in range(n)], "reward_model": [{"ground_truth": str(i)} for i in range(n)]},
        {"temperature": 1.0},
    )


def uids(d: DataProto) -> list[str]:
    return list(d.non_tensor_batch["uid"])


def first_ids(d: DataProto) -> list[int]:
    return d.batch["input_ids"][:, 0].tolist()


def assert_same(a: DataProto, b: DataProto) -> None:
    assert a.batch.keys() == b.batch.keys()
    for k in a.batch.keys():
        assert torch.equal(a.batch[k], b.batch[k]), k
    assert a.non_tensor_batch.keys() == b.non_tensor_batch.keys()
    for k in a.non_tensor_batch:
        assert list(a.non_tensor_batch[k]) == list(b.non_tensor_batch[k]), k
    assert a.meta_info == b.meta_info


def test_batch_is_a_tensordict_and_verl_exports_dataproto():
    d = make(3)
    assert verl.DataProto is DataProto
    assert isinstance(d.batch, TensorDict) and d.batch.batch_size == torch.Size([3])
    assert d.batch.keys() == {"input_ids", "attention_mask"}
    # a plain dict of tensors is converted; no tensors at all leaves an empty TensorDict that keeps the rows
    assert isinstance(DataProto(batch={"x": torch.zeros(2)}).batch, TensorDict)
    only_rows = DataProto(non_tensor_batch={"uid": np.array(["a", "b"], dtype=object)})
    assert len(only_rows) == 2 and only_rows.batch.batch_size == torch.Size([2])
    assert len(DataProto()) == 0 and len(DataProto().batch.keys()) == 0


def test_from_dict_keeps_arrays_and_builds_1d_object_arrays_from_lists_of_lists():
    d = DataProto.from_dict({"x": torch.zeros(2, 3)},
                            {"retrieved_ids": [["a", "b"], ["c", "d"]], "score": np.array([0.5, 1.5])})
    ids = d.non_tensor_batch["retrieved_ids"]
    assert ids.dtype == object and ids.shape == (2,) and ids[1] == ["c", "d"]
    assert d.non_tensor_batch["score"].dtype == np.float64  # an array is kept as given, as in veRL


def test_from_single_dict_sorts_columns_by_type_and_keeps_the_subclass():
    class Sub(DataProto):
        pass

    d = Sub.from_single_dict({"x": torch.arange(2), "uid": np.array(["a", "b"], dtype=object)}, meta_info={"k": 1})
    assert type(d) is Sub
    assert d.batch.keys() == {"x"} and list(d.non_tensor_batch) == ["uid"] and d.meta_info == {"k": 1}
    with pytest.raises(ValueError, match="'uid'"):
        DataProto.from_single_dict({"uid": ["a", "b"]})


def test_validation_names_the_offending_key_and_errors_are_also_assertion_errors():
    assert issubclass(DataProtoError, ValueError) and issubclass(DataProtoError, AssertionError)
    with pytest.raises(DataProtoError, match="'b'"):
        DataProto({"a": torch.zeros(3), "b": torch.zeros(2)})
    with pytest.raises(DataProtoError, match="'uid'"):
        DataProto.from_dict({"a": torch.zeros(3)}, {"uid": ["x", "y"]})
    with pytest.raises(TypeError, match="'uid'"):
        DataProto({"a": torch.zeros(2)}, {"uid": ["x", "y"]})  # a list, not an array
    with pytest.raises(DataProtoError, match="'s'"):
        DataProto({"s": torch.tensor(1.0)})
    with pytest.raises(TypeError, match="'l'"):
        DataProto({"l": [1, 2]})
    with pytest.raises(DataProtoError, match="num_batch_dims"):
        DataProto.from_dict({"x": torch.zeros(2, 3)}, num_batch_dims=2)
    with pytest.raises(DataProtoError, match="one batch dimension"):
        DataProto(TensorDict({"x": torch.zeros(2, 3)}, batch_size=[2, 3]))


def test_int_index_is_one_row_without_the_row_dimension():
    d = make(4)
    item = d[2]
    assert isinstance(item, DataProtoItem)
    assert item.batch["input_ids"].tolist() == [2, 12] and item.batch.batch_size == torch.Size([])
    assert item.non_tensor_batch == {"uid": "p2", "reward_model": {"ground_truth": "2"}}
    assert item.meta_info is d.meta_info
    assert d[-1].non_tensor_batch["uid"] == "p3" and d[np.int64(0)].non_tensor_batch["uid"] == "p0"
    with pytest.raises(IndexError):
        d[4]
    with pytest.raises(TypeError, match="str"):
        d["input_ids"]


def test_slices_index_arrays_and_masks_keep_all_parts():
    d = make(4)
    s = d[1:3]
    assert s.batch["input_ids"].tolist() == [[1, 11], [2, 12]] and uids(s) == ["p1", "p2"]
    assert s.meta_info is d.meta_info  # shared, as in veRL
    assert uids(d[::2]) == ["p0", "p2"]
    assert first_ids(d[np.array([3, 0])]) == [3, 0] and uids(d[np.array([3, 0])]) == ["p3", "p0"]
    assert uids(d[[2]]) == ["p2"] and uids(d[torch.tensor([1, 1])]) == ["p1", "p1"]
    for mask in ([True, False, False, True], np.array([True, False, False, True]),
                 torch.tensor([True, False, False, True])):
        assert uids(d[mask]) == ["p0", "p3"] and d[mask].batch.batch_size == torch.Size([2])
    assert len(d[[]]) == 0 and list(d[[]].batch["input_ids"].shape) == [0, 2]
    with pytest.raises(IndexError, match="shape"):
        d[[True, False]]


def test_select_shares_tensors_in_new_containers():
    d = make(2)
    s = d.select(batch_keys=["input_ids"], non_tensor_batch_keys=["uid"], meta_info_keys=[])
    assert s.batch.keys() == {"input_ids"} and list(s.non_tensor_batch) == ["uid"] and s.meta_info == {}
    assert s.batch["input_ids"].data_ptr() == d.batch["input_ids"].data_ptr()
    whole = d.select()
    whole.batch["extra"] = torch.zeros(2)
    whole.non_tensor_batch["more"] = np.array([1, 2])
    assert "extra" not in d.batch.keys() and "more" not in d.non_tensor_batch  # d untouched
    with pytest.raises(KeyError, match="values"):
        d.select(batch_keys=["values"])
    # as in veRL, absent non-tensor and meta keys are skipped
    assert list(d.select(non_tensor_batch_keys=["uid", "absent"]).non_tensor_batch) == ["uid"]
    deep = d.select(deepcopy=True)
    deep.non_tensor_batch["reward_model"][0]["ground_truth"] = "changed"
    assert d.non_tensor_batch["reward_model"][0] == {"ground_truth": "0"}


def test_pop_removes_keys_and_a_failed_pop_removes_nothing():
    d = make(2)
    popped = d.pop(batch_keys=["attention_mask"], non_tensor_batch_keys=["reward_model"], meta_info_keys=["temperature"])
    assert popped.batch.keys() == {"attention_mask"} and list(popped.non_tensor_batch) == ["reward_model"]
    assert popped.meta_info == {"temperature": 1.0} and len(popped) == 2
    assert d.batch.keys() == {"input_ids"} and list(d.non_tensor_batch) == ["uid"] and d.meta_info == {}
    with pytest.raises(KeyError, match="'nope'"):
        d.pop(batch_keys=["input_ids", "nope"])
    assert "input_ids" in d.batch.keys()
    assert len(make(2).pop(meta_info_keys=["temperature"])) == 0  # meta_info alone has no rows


def test_union_merges_in_place_and_rejects_conflicts():
    d = make(2)
    extra = DataProto.from_dict(
        {"input_ids": d.batch["input_ids"].clone(), "values": torch.ones(2, 2)},
        {"uid": ["p0", "p1"], "score": np.array([np.nan, 1.0])},
        {"temperature": 1.0, "step": 3},
    )
    assert d.union(extra) is d
    assert d.batch.keys() == {"input_ids", "attention_mask", "values"}
    assert d.meta_info == {"temperature": 1.0, "step": 3}
    # NaN equals NaN when the same column comes back
    d.union(DataProto.from_dict(non_tensors={"score": np.array([np.nan, 1.0])}))

    with pytest.raises(DataProtoError, match="'values'"):
        d.union(DataProto({"values": torch.zeros(2, 2)}))
    with pytest.raises(DataProtoError, match="'uid'"):
        d.union(DataProto.from_dict(non_tensors={"uid": ["p0", "other"]}))
    with pytest.raises(DataProtoError, match="'temperature'"):
        d.union(DataProto(meta_info={"temperature": 0.5}))
    with pytest.raises(DataProtoError, match="3 rows"):
        d.union(make(3).select(batch_keys=["attention_mask"]))
    # a DataProto of meta_info only has no rows: it merges both ways
    rowless = DataProto(meta_info={"metrics": {"a": 1.0}})
    assert len(rowless.union(make(3))) == 3 and rowless.batch.batch_size == torch.Size([3])


def test_union_tensor_dict_adds_keys_and_checks_shared_ones():
    a = TensorDict({"x": torch.arange(3)}, batch_size=[3])
    out = union_tensor_dict(a, TensorDict({"x": torch.arange(3), "y": torch.ones(3)}, batch_size=[3]))
    assert out is a and a["y"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(AssertionError, match="'x'"):
        union_tensor_dict(a, TensorDict({"x": torch.zeros(3, dtype=torch.long)}, batch_size=[3]))
    with pytest.raises(DataProtoError, match="batch_size"):
        union_tensor_dict(a, TensorDict({"z": torch.zeros(2)}, batch_size=[2]))


def test_chunk_then_concat_is_identity_and_uneven_chunks_need_padding_enabled(monkeypatch):
    d = make(6)
    parts = d.chunk(3)
    assert [len(p) for p in parts] == [2, 2, 2] and all(p.meta_info == {"temperature": 1.0} for p in parts)
    assert_same(DataProto.concat(parts), d)
    with pytest.raises(DataProtoError, match="6 rows into 4"):
        d.chunk(4)
    # with padding enabled veRL lets chunk split unevenly: 6 rows into 4 -> 2, 2, 1, 1
    monkeypatch.setattr(DataProtoConfig, "auto_padding", True)
    assert [uids(p) for p in d.chunk(4)] == [["p0", "p1"], ["p2", "p3"], ["p4"], ["p5"]]
    monkeypatch.setattr(DataProtoConfig, "auto_padding", False)
    monkeypatch.setenv("VERL_AUTO_PADDING", "1")
    assert [len(p) for p in d.chunk(4)] == [2, 2, 1, 1]
    monkeypatch.delenv("VERL_AUTO_PADDING")
    padded = DataProto.from_dict({"x": torch.arange(7)}, auto_padding=True)
    assert [p.batch["x"].tolist() for p in padded.chunk(3)] == [[0, 1, 2], [3, 4], [5, 6]]


def test_concat_rejects_different_keys():
    d = make(2)
    with pytest.raises(DataProtoError, match="values"):
        DataProto.concat([d[:1], d[1:2].union(DataProto({"values": torch.zeros(1)}))])
    with pytest.raises(DataProtoError, match="empty"):
        DataProto.concat([])


def test_concat_gathers_each_parts_metrics_into_lists_and_merges_other_meta():
    # three workers' outputs: metrics as a dict, as a list of dicts, and absent
    parts = [
        DataProto.from_dict({"x": torch.tensor([0])}, meta_info={"metrics": {"loss": 0.5, "lr": 1e-3}, "step": 7}),
        DataProto.from_dict({"x": torch.tensor([1])}, meta_info={"metrics": [{"loss": 0.25, "lr": 1e-3}], "step": 7}),
        DataProto.from_dict({"x": torch.tensor([2])}, meta_info={"step": 7, "only_here": "z"}),
    ]
    out = DataProto.concat(parts)
    assert out.batch["x"].tolist() == [0, 1, 2]
    assert out.meta_info == {"metrics": {"loss": [0.5, 0.25], "lr": [1e-3, 1e-3]}, "step": 7, "only_here": "z"}
    # rowless worker results (update_actor's) concatenate to no rows and their metrics
    rowless = [DataProto(meta_info={"metrics": {"loss": v}}) for v in (1.0, 3.0)]
    merged = DataProto.concat(rowless)
    assert len(merged) == 0 and merged.meta_info == {"metrics": {"loss": [1.0, 3.0]}}
    with pytest.raises(AssertionError, match="Conflicting values for meta_info key 'step'"):
        DataProto.concat([parts[0], DataProto.from_dict({"x": torch.tensor([3])}, meta_info={"step": 8})])


def test_split_last_part_shorter_and_concat_identity():
    d = make(5)
    parts = d.split(2)
    assert [len(p) for p in parts] == [2, 2, 1]
    assert_same(DataProto.concat(parts), d)


def test_repeat_interleave_and_tiled_order():
    d = make(2)
    inter = d.repeat(3, interleave=True)
    # rows a, b -> a a a b b b
    assert first_ids(inter) == [0, 0, 0, 1, 1, 1]
    assert uids(inter) == ["p0", "p0", "p0", "p1", "p1", "p1"]
    tiled = d.repeat(2, interleave=False)
    # rows a, b -> a b a b, the second dimension untouched
    assert tiled.batch["input_ids"].tolist() == [[0, 10], [1, 11], [0, 10], [1, 11]]
    assert uids(tiled) == ["p0", "p1", "p0", "p1"]


def test_reorder_permutes_rows_in_place():
    d = make(4)
    d.reorder(torch.tensor([2, 0, 3, 1]))
    assert first_ids(d) == [2, 0, 3, 1] and uids(d) == ["p2", "p0", "p3", "p1"]
    assert d.meta_info == {"temperature": 1.0}


def test_pad_repeats_leading_rows_and_unpad_is_identity():
    d = make(3)
    d.meta_info["metrics"] = {"loss": 0.5}
    padded, pad = pad_dataproto_to_divisor(d, 4)
    assert pad == 1 and len(padded) == 4
    assert uids(padded) == ["p0", "p1", "p2", "p0"]
    assert padded.meta_info == {"temperature": 1.0, "metrics": {"loss": 0.5}}  # not gathered as concat would
    assert_same(unpad_dataproto(padded, pad), d)

    # more padding than rows cycles through them: 2 rows to a multiple of 5 -> 2 + 3
    padded, pad = pad_dataproto_to_divisor(make(2), 5)
    assert pad == 3 and uids(padded) == ["p0", "p1", "p0", "p1", "p0"]

    same, pad = pad_dataproto_to_divisor(d, 3)
    assert pad == 0 and same is d
    assert unpad_dataproto(d, 0) is d


def test_fold_groups_consecutive_rows_and_unfold_undoes_it():
    d = make(2).repeat(3, interleave=True)  # rows p0 p0 p0 p1 p1 p1
    folded = fold_batch_dim(d, new_batch_size=2)
    assert folded.batch.batch_size == torch.Size([2]) and list(folded.batch["input_ids"].shape) == [2, 3, 2]
    assert folded.batch["input_ids"][1, :, 0].tolist() == [1, 1, 1]
    assert folded.non_tensor_batch["uid"].tolist() == [["p0", "p0", "p0"], ["p1", "p1", "p1"]]
    folded.reorder(torch.tensor([1, 0]))  # whole groups move
    flat = unfold_batch_dim(folded, batch_dims=2)
    assert first_ids(flat) == [1, 1, 1, 0, 0, 0] and uids(flat) == ["p1", "p1", "p1", "p0", "p0", "p0"]
    assert flat.meta_info == {"temperature": 1.0}
    assert len(d) == 6 and d.non_tensor_batch["uid"].shape == (6,)  # folding left d alone
    with pytest.raises(DataProtoError, match="6 rows into 4"):
        fold_batch_dim(d, 4)


def test_pickle_disk_round_trip_and_to_device(tmp_path):
    d = make(3)
    assert_same(pickle.loads(pickle.dumps(d)), d)
    path = tmp_path / "batch.pkl"
    d.save_to_disk(path)
    loaded = DataProto.load_from_disk(path)
    assert isinstance(loaded.batch, TensorDict)
    assert_same(loaded, d)
    moved = d.to("cpu")
    assert moved is d and d.batch["input_ids"].device.type == "cpu"
