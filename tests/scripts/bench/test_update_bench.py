"""The update benchmark: both ways of updating give the same gradients, and it reports both times."""
from __future__ import annotations

from scripts.bench.update_bench import main


def test_update_bench_compares_the_two_ways_on_the_same_batch(tiny_model_dir, tmp_path):
    out = tmp_path / "update.json"
    report = main(["--model", str(tiny_model_dir), "--rows", "4", "--silent-share", "0.5", "--context-tokens", "24",
                   "--response-length", "12", "--token-budget", "64", "--repeats", "2", "--dtype", "float32",
                   "--out", str(out)])
    assert report["silent_rows"] == 2 and report["tokens_per_row"] == 36
    assert len(report["every_row_s"]) == len(report["silent_rows_looked_at_s"]) == len(report["pair_ratios"]) == 2
    assert report["grad_max_abs"] > 0
    assert report["grad_max_abs_diff"] <= 1e-6 * max(1.0, report["grad_max_abs"])
    assert out.read_text().startswith("{")
