"""OUT/README.md of a recipe run: rag_r1.eval.report's tables, plus what only the recipe has: RL against
SFT on the same questions, the learning checks, training curves, the frontier and stage times.

    python -m recipe.report OUT      # re-write OUT/README.md from what a run left

Reads `OUT/eval/<model>-<mode>/<set>/{summary.json,trajectories.jsonl}` (rag_r1.eval),
`OUT/runs/{sft,rl}/metrics.jsonl` (the trainers' jsonl logger), `OUT/frontier/counts.json`,
`OUT/config.json` and `OUT/stage_times.jsonl`; writes README.md, eval.png and curves.png beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path

from rag_r1.eval.metrics import is_yes_no, paired_bootstrap
from rag_r1.eval.report import (MISSING, evidence_by_round, evidence_table, load_runs, markdown_report,
                                markdown_table, outcome_table, passage_titles, plot_report, pyplot,
                                read_jsonl, read_trajectories, type_stats, type_table)

# (metric key in the RL log, panel title); a key missing from the log leaves its panel out.
RL_CURVES = [
    ("sampling/score_mean", "reward per step (every sample)"),
    ("critic/score/mean", "reward of the trained groups"),
    ("reward/em", "EM per step (every sample)"),
    ("reward/f1", "F1 per step (every sample)"),
    ("actor/ppo_kl", "KL (policy vs rollout)"),
    ("actor/reward_kl_penalty", "KL penalty in the reward (vs reference)"),
    ("response_length/mean", "response length (tokens)"),
    ("env/search_calls_mean", "searches per trajectory"),
    ("env/queries_per_call", "queries per search"),
]


def curve(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(rl: list[dict], sft: list[dict], png: Path) -> Path | None:
    panels = [(key, title, rl) for key, title in RL_CURVES if curve(rl, key)[0]]
    if curve(sft, "train/loss")[0]:
        panels.insert(0, ("train/loss", "SFT loss", sft))
    if not panels:
        return None
    plt = pyplot()
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


def rl_table(rl: list[dict]) -> str:
    """One row per RL step: the curves' metrics, evidence recall and the step's seconds."""
    keys = [k for k, _ in RL_CURVES] + ["sampling/kept_groups", "env/evidence_recall", "timing_s/step"]
    keys = [k for k in keys if any(k in row for row in rl)]
    rows = [[row["step"], *(f"{row[k]:.4g}" if isinstance(row.get(k), (int, float)) else MISSING for k in keys)]
            for row in rl]
    return markdown_table(["step", *keys], rows)


def git_commit() -> str:
    """Short HEAD, with "-dirty" when tracked files differ from it (the numbers came from other code)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=repo, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=repo, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def recipe_order(runs):
    """Rows in the order of the recipe (base, sft, rl; single before multi), unknown labels last."""
    models, modes = ["base", "sft", "rl"], ["single", "multi"]

    def key(run):
        model, _, mode = run.label.partition("-")
        return (models.index(model) if model in models else len(models),
                modes.index(mode) if mode in modes else len(modes), run.label, run.dataset)

    return sorted(runs, key=key)


def reward_trend(rl: list[dict], key: str = "sampling/score_mean") -> dict[str, float] | None:
    """Mean reward of the first and of the last quarter of the RL steps (at least one step each).

    >>> reward_trend([{"step": i, "sampling/score_mean": v} for i, v in enumerate([0, .5, 1, 1, 1, 1, 1.5, 2.5])])
    {'steps': 8, 'first_quarter': 0.25, 'last_quarter': 2.0}
    """
    _, values = curve(rl, key)
    if len(values) < 2:
        return None
    quarter = max(1, len(values) // 4)
    return {"steps": len(values), "first_quarter": sum(values[:quarter]) / quarter,
            "last_quarter": sum(values[-quarter:]) / quarter}


def run_config(out: Path) -> dict:
    """OUT/config.json (retrieval settings and the profile the run used); {} without one."""
    config = out / "config.json"
    return json.loads(config.read_text()) if config.exists() else {}


def reward_label(out: Path) -> str:
    """The reward the run's profile names, " (<scorer>[, round cost <c>])"; "" when it names none."""
    rl = run_config(out).get("profile", {}).get("rl", {})
    scorer = rl.get("custom_reward_function.reward_kwargs.scorer")
    if scorer is None:
        return ""
    cost = rl.get("custom_reward_function.reward_kwargs.round_cost") or 0
    return f" ({scorer}{f', round cost {cost:g}' if cost else ''})"


def rl_vs_sft(out: Path, modes=("single", "multi"), split: str = "test") -> list[dict]:
    """Per mode evaluated for both models: EM of each on the same questions, the RL - SFT difference
    with its 95 % paired-bootstrap interval, and the questions only one of them answered. Where some of
    the questions are answered by yes or no, a second row leaves those out: there a model scores by
    the answer it always gives, so the row tells reading gains from a changed guess."""
    results = []
    for mode in modes:
        sft = read_trajectories(out / "eval", f"sft-{mode}", split)
        rl = read_trajectories(out / "eval", f"rl-{mode}", split)
        ids = [i for i in sft if i in rl]
        if not ids:
            continue
        results.append(paired_em(mode, sft, rl, ids))
        open_ids = [i for i in ids if not is_yes_no(sft[i].get("golden_answers", ()))]
        if 0 < len(open_ids) < len(ids):
            results.append(paired_em(f"{mode}, without yes/no", sft, rl, open_ids))
    return results


def paired_em(label: str, sft: dict[str, dict], rl: dict[str, dict], ids: list[str]) -> dict:
    """One row of `rl_vs_sft`: both models' EM on `ids`, the paired bootstrap, questions gained and lost."""
    before, after = [sft[i]["em"] for i in ids], [rl[i]["em"] for i in ids]
    return {"mode": label, "sft": sum(before) / len(ids), "rl": sum(after) / len(ids),
            "gained": sum(a > b for a, b in zip(after, before)),
            "lost": sum(a < b for a, b in zip(after, before)), **paired_bootstrap(before, after)}


def rl_vs_sft_table(results: list[dict]) -> str:
    rows = [[r["mode"], r["n"], f"{r['sft']:.3f}", f"{r['rl']:.3f}", f"{r['diff']:+.3f}",
             f"[{r['lo']:+.3f}, {r['hi']:+.3f}]", f"{r['gained']} / {r['lost']}"] for r in results]
    return markdown_table(["mode", "questions", "SFT EM", "SFT+RL EM", "difference", "95 % interval", "gained / lost"],
                          rows)


def corpus_titles(out: Path) -> dict[str, str]:
    """Passage titles by id, from the corpus named in OUT/config.json (empty when unknown)."""
    corpus = run_config(out).get("corpus")
    if corpus is None or not Path(corpus).is_file():
        return {}
    return passage_titles(Path(corpus))


def learning_checks(out: Path, rl: list[dict], titles: dict[str, str]) -> list[str]:
    """What shows RL teaching the agent, each as a line that says whether it holds: EM in multi mode
    rising untrained < SFT < SFT+RL, the RL reward of the last quarter of the steps above the first,
    and comparison questions taking fewer rounds in multi mode than in single mode after RL, at 1.5
    queries per round or more. A check whose runs were not evaluated is left out."""
    def verdict(ok: bool) -> str:
        return "**yes**" if ok else "**no**"

    def test_rows(label: str) -> list[dict]:
        return list(read_trajectories(out / "eval", label, "test").values())

    lines = []
    em = {label: [r["em"] for r in test_rows(label)] for label in ("base-multi", "sft-multi", "rl-multi")}
    if all(em.values()):
        means = [sum(v) / len(v) for v in em.values()]
        lines.append(f"- EM in multi mode rises untrained < SFT < SFT+RL ({' < '.join(f'{m:.3f}' for m in means)}): "
                     f"{verdict(means[0] < means[1] < means[2])}")
    # a scorer logs its extras beside its score, so `sampling/em` exists only when the score is not EM
    for key, what in (("sampling/score_mean", f"RL reward{reward_label(out)}"),
                      ("sampling/em", "EM of the policy's own RL samples (the reward is not EM)")):
        trend = reward_trend(rl, key)
        if trend:
            lines.append(f"- {what} of the last quarter of the steps above the first ({trend['first_quarter']:.3f} "
                         f"-> {trend['last_quarter']:.3f}): {verdict(trend['last_quarter'] > trend['first_quarter'])}")
    single = type_stats(test_rows("rl-single"), titles).get("comparison")
    multi = type_stats(test_rows("rl-multi"), titles).get("comparison")
    if single and multi:
        ok = multi["rounds"] < single["rounds"] and multi["queries_per_round"] >= 1.5
        lines.append(f"- after RL, comparison questions take fewer rounds in multi mode than in single mode "
                     f"({multi['rounds']:.2f} vs {single['rounds']:.2f}) at 1.5 queries per round or more "
                     f"({multi['queries_per_round']:.2f}): {verdict(ok)}")
    return lines


def write_results_readme(out: Path, wall_seconds: float | None = None, command: str | None = None) -> Path:
    out = Path(out)
    # the dev split (recipe.dev_questions) is held-out train questions, not a dataset: its own section
    runs = recipe_order([run for run in load_runs(out / "eval") if run.dataset != "dev"])
    plot_report(runs, out / "eval.png")
    rl = read_jsonl(out / "runs" / "rl" / "metrics.jsonl", missing_ok=True)
    sft = read_jsonl(out / "runs" / "sft" / "metrics.jsonl", missing_ok=True)
    curves = plot_curves(rl, sft, out / "curves.png")
    by_round = evidence_by_round(runs)

    stages = read_jsonl(out / "stage_times.jsonl", missing_ok=True)
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
        parts.append("- retrieval settings and the profile: `config.json`; every command run: `commands.sh`")
    parts += ["", markdown_report(runs), "![evaluation](eval.png)", ""]
    comparison = rl_vs_sft(out)
    if comparison:
        parts += ["## Does RL improve on SFT?", "",
                  "EM of the SFT model and of the SFT+RL model on the same questions; the interval is a 95 % "
                  "paired bootstrap over questions (10,000 resamples).", "", rl_vs_sft_table(comparison), ""]
    dev = rl_vs_sft(out, split="dev")
    if dev:
        parts += ["## RL vs SFT on held-out train questions (dev)", "",
                  f"The same comparison on {dev[0]['n']} train questions that neither SFT nor RL drew "
                  "(`eval/dev_questions.jsonl`): the set to compare settings on, so that the test questions above "
                  "decide nothing.", "", rl_vs_sft_table(dev), ""]
    titles = corpus_titles(out)
    checks = learning_checks(out, rl, titles)
    if checks:
        parts += ["## Does the agent learn?", "", *checks, ""]
    if any(read_trajectories(out / "eval", r.label, r.dataset) for r in runs):
        parts += ["## By question type", "", type_table(out / "eval", runs, titles), ""]
    outcomes = outcome_table(out / "eval", runs)
    if outcomes:
        parts += ["## Where the answers went wrong", "",
                  "A wrong answer whose answer was in the retrieved passages is a reading miss; one never retrieved is "
                  "a search miss (a yes/no answer counts as retrieved when every supporting passage was). The last "
                  "column tells reading from a fixed answer on yes/no questions: a model that answers \"no\" to all of "
                  "them is right on every \"no\" question without reading.", "",
                  outcomes, ""]
    if by_round:
        parts += ["## Evidence recall by retrieval round", "", evidence_table(by_round), "",
                  "The last panel of `eval.png` draws the same numbers.", ""]
    if curves is not None:
        parts += ["## Training curves", "", f"![curves]({curves.name})", ""]
        if sft:
            parts += ["SFT loss per step: " + ", ".join(f"{v:.3g}" for v in curve(sft, "train/loss")[1]), ""]
        trend = reward_trend(rl)
        if trend:
            parts += [f"RL reward{reward_label(out)}, the mean over the policy's own samples (guides left out): "
                      f"first quarter of the {trend['steps']} steps {trend['first_quarter']:.3f}, last quarter "
                      f"{trend['last_quarter']:.3f}.", ""]
        if rl:
            parts += [rl_table(rl), ""]
    frontier = out / "frontier" / "counts.json"
    if frontier.exists():
        counts = json.loads(frontier.read_text())
        parts += ["## RL questions at the frontier", "",
                  f"The SFT model sampled {counts['n']} times on each of {counts['questions']} train questions: right "
                  f"every time on {counts['always']}, never on {counts['never']}, sometimes on {counts['sometimes']}; "
                  f"{counts['kept']} were kept for RL (the sometimes ones"
                  f"{', and the never ones for the guides' if counts['kept'] > counts['sometimes'] else ''}).", ""]
    if stages:
        parts += ["## Stage times", "", markdown_table(["stage", "seconds"], [[s["stage"], s["seconds"]] for s in stages]),
                  ""]
    readme = out / "README.md"
    readme.write_text("\n".join(parts), encoding="utf-8")
    return readme


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the recipe's output directory (e.g. results/)")
    print(write_results_readme(parser.parse_args(argv).out))


if __name__ == "__main__":
    main()
