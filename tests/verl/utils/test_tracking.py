from __future__ import annotations

import pytest

from verl.utils.tracking import Tracking


def test_console_and_tensorboard(tmp_path, capsys):
    tracker = Tracking("p", "e", backends=["console", "tensorboard"], log_dir=str(tmp_path / "tb"))
    tracker.log({"critic/vf_loss": 0.25, "val/test_score/nq": 1.0}, step=3)
    tracker.finish()
    assert "step:3 - critic/vf_loss:0.25 - val/test_score/nq:1" in capsys.readouterr().out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("critic/vf_loss")] == [(3, 0.25)]


def test_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracking("p", "e", backends=["wandb"], config={"a": 1})
    tracker.log({"x": 1.0}, step=1)
    tracker.finish()
    assert list(tmp_path.glob("wandb/offline-run-*"))


def test_only_rank_zero_logs_and_unknown_backend_fails(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    Tracking("p", "e", backends=["console"]).log({"x": 1.0}, step=1)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="mlflow"):
        Tracking("p", "e", backends=["mlflow"])


def test_jsonl_backend_appends_one_row_per_step_and_survives_a_restart(tmp_path):
    import json

    from verl.utils.tracking import Tracking

    path = tmp_path / "run" / "metrics.jsonl"
    first = Tracking("p", "e", backends=["jsonl"], jsonl_path=str(path))
    first.log({"critic/score/mean": 0.25, "env/search_calls_mean": 1.5}, step=1)
    first.finish()
    resumed = Tracking("p", "e", backends=["jsonl"], jsonl_path=str(path))
    resumed.log({"critic/score/mean": 0.5, "note": "ok"}, step=2)
    resumed.finish()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"step": 1, "critic/score/mean": 0.25, "env/search_calls_mean": 1.5},
                    {"step": 2, "critic/score/mean": 0.5, "note": "ok"}]


def test_rewind_keeps_the_steps_up_to_the_checkpoint_and_empties_a_run_starting_over(tmp_path):
    import json

    path = tmp_path / "metrics.jsonl"
    killed = Tracking("p", "e", backends=["jsonl"], jsonl_path=str(path))
    for step in (0, 1, 2, 3):
        killed.log({"x": float(step)}, step=step)
    killed.finish()
    path.write_text(path.read_text() + '{"step": 4, "x"')  # the kill cut this line short

    resumed = Tracking("p", "e", backends=["jsonl"], jsonl_path=str(path))
    resumed.rewind(2)
    resumed.log({"x": 30.0}, step=3)
    resumed.finish()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 0, "x": 0.0}, {"step": 1, "x": 1.0}, {"step": 2, "x": 2.0}, {"step": 3, "x": 30.0}]

    again = Tracking("p", "e", backends=["jsonl"], jsonl_path=str(path))
    again.rewind(None)
    again.log({"x": 5.0}, step=1)
    again.finish()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"step": 1, "x": 5.0}]
    Tracking("p", "e", backends=["console"]).rewind(3)  # no jsonl: nothing to rewind
