"""The SFT trainer: the step lowers the loss, accumulation equals one batch, checkpoints load and
resume, and 2-process FSDP2 (gloo) trains exactly like one process."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from verl.trainer.fsdp_sft_trainer import (
    SFTConfig, compose_config, fit, masked_nll_sum, to_config, train_step,
)
from verl.utils import checkpoint as ckpt
from verl.utils.dataset.sft_dataset import SFTDataset

ROOT = Path(__file__).resolve().parents[3]


def agent_row(i: int) -> dict:
    """Rows of different lengths and different numbers of target tokens (so means of means differ)."""
    return {"conversations": [
        {"from": "human", "value": f"Which city is the capital? {i}"},
        {"from": "gpt", "value": "<think> I need to search. </think>\n<search> capital of France </search>"},
        {"from": "observation", "value": "\n<information>\nDoc 1(Title: Paris) Paris is the capital of France.\n</information>\n"},
        {"from": "gpt", "value": "<think> found </think>\n" + "<answer> Paris </answer>" * (1 + i % 3)}]}


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sft") / "train.jsonl"
    path.write_text("\n".join(json.dumps(agent_row(i)) for i in range(8)) + "\n")
    return path


@pytest.fixture(scope="module")
def dataset(tiny_model_dir, sft_file):
    from transformers import AutoTokenizer

    return SFTDataset(str(sft_file), AutoTokenizer.from_pretrained(tiny_model_dir), max_length=512, progress=False)


def load_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def config(model_dir, train_file, out_dir, *overrides) -> SFTConfig:
    """fp32 compute, so runs compare to 1e-6 on any CPU."""
    return to_config(compose_config([
        f"model.partial_pretrain={model_dir}", f"data.train_files={train_file}", f"data.val_files={train_file}",
        f"trainer.default_local_dir={out_dir}", "data.train_batch_size=4", "data.micro_batch_size_per_gpu=2",
        "optim.lr=1e-3", "trainer.total_epochs=1", "trainer.device=cpu", "trainer.logger=[tensorboard]",
        "model.fsdp_config.dtype=float32", *overrides]))


def test_one_step_lowers_the_loss_on_its_batch(tiny_model_dir, dataset):
    model = load_model(tiny_model_dir)
    batch = dataset.collate([dataset[i] for i in range(4)])
    with torch.no_grad():
        nll, count = masked_nll_sum(model, batch)
        # reference: full logits, position t scores token t+1, masked by the target's loss_mask
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        nll_BT = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    assert count.item() == batch["loss_mask"][:, 1:].sum().item() > 0
    assert nll.item() == pytest.approx((nll_BT * batch["loss_mask"][:, 1:]).sum().item(), rel=1e-5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    metrics = train_step(model, optimizer, [batch], clip_grad=1.0)
    with torch.no_grad():
        after, _ = masked_nll_sum(model, batch)
    assert metrics["train/loss"] == pytest.approx(nll.item() / count.item(), rel=1e-6)
    assert metrics["train/target_tokens"] == count.item()
    # a random model over a 400-token vocabulary starts near ln(400) = 5.99 per token
    assert 5.0 < metrics["train/loss"] < 7.0
    assert after.item() / count.item() < metrics["train/loss"] - 0.3


def test_micro_batch_accumulation_equals_one_big_batch(tiny_model_dir, dataset):
    rows = [dataset[i] for i in range(4)]
    targets = [int(r["loss_mask"][1:].sum()) for r in rows]
    assert len(set(targets)) > 1  # unequal token counts: a mean of per-micro-batch means would differ
    one, four = load_model(tiny_model_dir), load_model(tiny_model_dir)
    big = train_step(one, torch.optim.SGD(one.parameters(), lr=0.1), [dataset.collate(rows)], clip_grad=1e9)
    small = train_step(four, torch.optim.SGD(four.parameters(), lr=0.1), [dataset.collate([r]) for r in rows], clip_grad=1e9)
    assert small["train/loss"] == pytest.approx(big["train/loss"], rel=1e-6)
    assert small["train/grad_norm"] == pytest.approx(big["train/grad_norm"], rel=1e-5)
    for (name, p), q in zip(one.named_parameters(), four.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)
    # the naive average of per-row means is a different number: the global denominator matters
    fresh = load_model(tiny_model_dir)
    with torch.no_grad():
        per_row = [masked_nll_sum(fresh, dataset.collate([r])) for r in rows]
    assert abs(sum(s / c for s, c in per_row).item() / 4 - big["train/loss"]) > 1e-4


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir)).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_fit_saves_a_loadable_hf_checkpoint_and_resumes_like_an_uninterrupted_run(tiny_model_dir, sft_file, dataset, tmp_path):
    from transformers import AutoTokenizer

    logged = ("trainer.total_epochs=2", "trainer.save_freq=2", "trainer.logger=[jsonl]")
    full = fit(config(tiny_model_dir, sft_file, tmp_path / "full", *logged))
    final = ckpt.step_dir(tmp_path / "full", 4)
    model, tokenizer = load_model(final), AutoTokenizer.from_pretrained(final)
    everything = dataset.collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        start, count = masked_nll_sum(load_model(tiny_model_dir), everything)
    assert tokenizer("<search>")["input_ids"] == AutoTokenizer.from_pretrained(tiny_model_dir)("<search>")["input_ids"]
    with torch.no_grad():  # the saved weights are the trained ones: their val loss is what fit reported
        nll, _ = masked_nll_sum(model, everything)
    assert nll.item() / count.item() == pytest.approx(full["val/loss"], rel=1e-5)
    assert full["val/loss"] < start.item() / count.item() - 0.3  # it learned

    # A run killed during step 4's save: only global_step_2 exists, but its log has steps 1-3 and a cut line.
    # Resuming gives the same steps 3-4, and the log has each step once.
    killed = tmp_path / "killed"
    shutil.copytree(ckpt.step_dir(tmp_path / "full", 2), ckpt.step_dir(killed, 2))
    ckpt.mark_latest(killed, 2)
    full_log = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in full_log] == [1, 2, 3, 4]
    (killed / "metrics.jsonl").write_text("\n".join(full_log[:3]) + "\n" + full_log[3][:20])
    resumed = fit(config(tiny_model_dir, sft_file, killed, *logged))
    resumed_log = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in resumed_log] == [1, 2, 3, 4]
    for row, full_row in zip(resumed_log, map(json.loads, full_log)):
        losses = {key: value for key, value in full_row.items() if key.endswith("loss")}
        assert losses and {key: row[key] for key in losses} == pytest.approx(losses, rel=1e-6)
    assert resumed["train/loss"] == pytest.approx(full["train/loss"], rel=1e-6)
    assert resumed["val/loss"] == pytest.approx(full["val/loss"], rel=1e-6)
    for p, q in zip(model.parameters(), load_model(ckpt.step_dir(killed, 4)).parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)


def test_only_the_newest_checkpoints_are_kept(tiny_model_dir, sft_file, tmp_path):
    fit(config(tiny_model_dir, sft_file, tmp_path, "trainer.total_epochs=2", "trainer.save_freq=1",
               "trainer.max_ckpt_to_keep=2"))
    assert sorted(p.name for p in tmp_path.glob("global_step_*")) == ["global_step_3", "global_step_4"]
    assert ckpt.latest_step_dir(tmp_path) == ckpt.step_dir(tmp_path, 4)
    with pytest.raises(ValueError, match=r"trainer\.max_ckpt_to_keep=0: expected >= 1"):
        config(tiny_model_dir, sft_file, tmp_path, "trainer.max_ckpt_to_keep=0")


def test_two_process_fsdp2_over_gloo_matches_one_process(tiny_model_dir, sft_file, tmp_path):
    common = [f"model.partial_pretrain={tiny_model_dir}", f"data.train_files={sft_file}", "data.train_batch_size=4",
              "data.micro_batch_size_per_gpu=1", "optim.lr=1e-3", "trainer.total_training_steps=2",
              "trainer.device=cpu", "trainer.logger=[tensorboard]", f"data.val_files={sft_file}",
              "model.fsdp_config.dtype=float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                    "-m", "verl.trainer.fsdp_sft_trainer", *common, f"trainer.default_local_dir={tmp_path / 'fsdp'}"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=240)
    # one thread like each rank (OMP_NUM_THREADS=1), so a machine with many cores runs the same CPU kernels
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = fit(config(tiny_model_dir, sft_file, tmp_path / "one", "data.micro_batch_size_per_gpu=1",
                            "trainer.total_training_steps=2"))
    finally:
        torch.set_num_threads(threads)
    fsdp = scalars(tmp_path / "fsdp" / "tensorboard")
    one = scalars(tmp_path / "one" / "tensorboard")
    for tag in ("train/loss", "train/grad_norm", "val/loss"):
        assert [s for s, _ in fsdp[tag]] == [s for s, _ in one[tag]], tag
        for (_, a), (_, b) in zip(fsdp[tag], one[tag]):
            assert a == pytest.approx(b, rel=1e-5), tag
    assert fsdp["val/loss"][-1][1] == pytest.approx(single["val/loss"], rel=1e-5)
    sharded, plain = load_model(ckpt.step_dir(tmp_path / "fsdp", 2)), load_model(ckpt.step_dir(tmp_path / "one", 2))
    for (name, p), q in zip(plain.named_parameters(), sharded.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


def test_config_errors_name_the_key():
    with pytest.raises(Exception, match="trian_files"):
        compose_config(["data.trian_files=x"])
    with pytest.raises(ValueError, match="missing mandatory key 'model.partial_pretrain'"):
        compose_config(["data.train_files=x"])
    with pytest.raises(ValueError, match="data.micro_batch_size_per_gpu=3"):
        compose_config(["data.train_files=x", "model.partial_pretrain=y", "data.micro_batch_size_per_gpu=3"])
    with pytest.raises(ValueError, match="optim.lr_scheduler='linear'"):
        compose_config(["data.train_files=x", "model.partial_pretrain=y", "optim.lr_scheduler=linear"])


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, dataset):
    from verl.trainer.fsdp_sft_trainer import FSDPConfig, ModelConfig, build_model

    batch = dataset.collate([dataset[i] for i in range(2)])
    grads = []
    for checkpointing in (False, True):
        model_config = ModelConfig(str(tiny_model_dir), checkpointing, fsdp_config=FSDPConfig(dtype="float32"))
        model = build_model(str(tiny_model_dir), model_config, "cpu", world_size=1)
        assert model.is_gradient_checkpointing == checkpointing
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), [batch], clip_grad=1e9)
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_validation_covers_every_row_and_a_rank_out_of_rows_adds_nothing(tiny_model_dir, dataset):
    from verl.trainer.fsdp_sft_trainer import validation_loss

    model = load_model(tiny_model_dir)
    # 8 rows over 3 "ranks", one row per forward: rank 2 holds rows 2 and 5 and runs a third, empty forward
    with torch.no_grad():
        nll, count = masked_nll_sum(model, dataset.collate([dataset[2], dataset[5]]))
    got = validation_loss(model, dataset, micro_batch_size=1, rank=2, world_size=3, device="cpu")
    assert got == pytest.approx(nll.item() / count.item(), rel=1e-6)
