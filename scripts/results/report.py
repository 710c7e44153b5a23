"""results/README.md: the evaluation tables, evidence recall by round, and the training curves.

    python -m scripts.results.report OUT      # re-write OUT/README.md from what a pipeline run left

Reads `OUT/eval/<model>-<mode>/<set>/summary.json` (rag_r1.eval), `OUT/runs/{sft,ppo}/metrics.jsonl`
(the trainers' jsonl logger) and `OUT/stage_times.jsonl`; writes README.md, curves.png and
evidence_by_round.png beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path

from rag_r1.eval.report import load_runs, markdown_report, plot_report

# (metric key in the PPO log, panel title); a key missing from the log leaves its panel out.
PPO_CURVES = [
    ("critic/score/mean", "reward (EM) per step"),
    ("reward/f1", "F1 per step"),
    ("actor/ppo_kl", "KL (policy vs rollout)"),
    ("actor/reward_kl_penalty", "KL penalty in the reward (vs reference)"),
    ("response_length/mean", "response length (tokens)"),
    ("env/search_calls_mean", "searches per trajectory"),
    ("env/queries_per_call", "queries per search"),
]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def curve(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(ppo: list[dict], sft: list[dict], png: Path) -> Path | None:
    panels = [(key, title, ppo) for key, title in PPO_CURVES if curve(ppo, key)[0]]
    if curve(sft, "train/loss")[0]:
        panels.insert(0, ("train/loss", "SFT loss", sft))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (key, title, log) in zip(axes.flat, panels):
        steps, values = curve(log, key)
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def evidence_by_round(runs) -> dict[str, list[float]]:
    return {r.label: r.summary["evidence_recall_by_round"] for r in runs if "evidence_recall_by_round" in r.summary}


def plot_evidence(by_label: dict[str, list[float]], png: Path) -> Path | None:
    if not by_label:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, values in by_label.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    ax.set_xlabel("retrieval round")
    ax.set_ylabel("evidence recall so far")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def evidence_table(by_label: dict[str, list[float]]) -> str:
    if not by_label:
        return ""
    width = max(len(v) for v in by_label.values())
    header = "| Method | " + " | ".join(f"after round {i}" for i in range(1, width + 1)) + " |"
    lines = [header, "|" + "---|" * (width + 1)]
    for label, values in by_label.items():
        cells = [f"{v:.3f}" for v in values] + ["–"] * (width - len(values))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ppo_table(ppo: list[dict]) -> str:
    """One row per PPO step: the curves' metrics, evidence recall and the step's seconds."""
    keys = [k for k, _ in PPO_CURVES] + ["env/evidence_recall", "timing_s/step"]
    keys = [k for k in keys if any(k in row for row in ppo)]
    lines = ["| step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in ppo:
        cells = [f"{row[k]:.4g}" if isinstance(row.get(k), (int, float)) else "–" for k in keys]
        lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def git_commit() -> str:
    """Short HEAD, with "-dirty" when tracked files differ from it (the numbers came from other code)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=repo, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=repo, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def pipeline_order(runs):
    """Rows in the order of the recipe (base, sft, ppo; single before multi), unknown labels last."""
    models, modes = ["base", "sft", "ppo"], ["single", "multi"]

    def key(run):
        model, _, mode = run.label.partition("-")
        return (models.index(model) if model in models else len(models),
                modes.index(mode) if mode in modes else len(modes), run.label, run.dataset)

    return sorted(runs, key=key)


def write_results_readme(out: Path, wall_seconds: float | None = None, command: str | None = None) -> Path:
    out = Path(out)
    runs = pipeline_order(load_runs(out / "eval"))
    plot_report(runs, out / "eval.png")
    ppo = read_jsonl(out / "runs" / "ppo" / "metrics.jsonl")
    sft = read_jsonl(out / "runs" / "sft" / "metrics.jsonl")
    curves = plot_curves(ppo, sft, out / "curves.png")
    by_round = evidence_by_round(runs)
    evidence_png = plot_evidence(by_round, out / "evidence_by_round.png")

    stages = read_jsonl(out / "stage_times.jsonl")
    parts = ["# RAG-R1 results", ""]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    if command:
        parts.append(f"- command: `{command}`")
    parts.append(f"- git commit: `{git_commit()}`; machine: {machine}")
    if wall_seconds is not None:
        parts.append(f"- wall time of this invocation: {wall_seconds / 60:.1f} min")
    if stages:
        parts.append(f"- sum of stage times (all invocations; resumed stages counted once): "
                     f"{sum(s['seconds'] for s in stages) / 60:.1f} min")
    if (out / "config.json").exists():
        parts.append("- retrieval and pipeline settings: `config.json`; every command run: `commands.sh`")
    parts += ["", markdown_report(runs), "![evaluation](eval.png)", ""]
    if by_round:
        parts += ["## Evidence recall by retrieval round", "", evidence_table(by_round), ""]
        parts += [f"![evidence by round]({evidence_png.name})", ""]
    if curves is not None:
        parts += ["## Training curves", "", f"![curves]({curves.name})", ""]
        if sft:
            parts += ["SFT loss per step: " + ", ".join(f"{v:.3g}" for v in curve(sft, "train/loss")[1]), ""]
        if ppo:
            parts += [ppo_table(ppo), ""]
    if stages:
        parts += ["## Stage times", "", "| stage | seconds |", "|---|---|"]
        parts += [f"| {s['stage']} | {s['seconds']} |" for s in stages]
        parts.append("")
    readme = out / "README.md"
    readme.write_text("\n".join(parts), encoding="utf-8")
    return readme


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the pipeline's output directory (e.g. results/)")
    print(write_results_readme(parser.parse_args(argv).out))


if __name__ == "__main__":
    main()
