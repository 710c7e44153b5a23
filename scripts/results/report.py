"""results/README.md: the evaluation tables, evidence recall by round, and the training curves.

    python -m scripts.results.report OUT      # re-write OUT/README.md from what a pipeline run left

Reads `OUT/eval/<model>-<mode>/<set>/{summary.json,trajectories.jsonl}` (rag_r1.eval),
`OUT/runs/{sft,rl}/metrics.jsonl` (the trainers' jsonl logger), `OUT/frontier/counts.json` and
`OUT/stage_times.jsonl`; writes README.md, curves.png and evidence_by_round.png beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path

from rag_r1.eval.metrics import answer_outcomes, is_yes_no, paired_bootstrap
from rag_r1.eval.report import load_runs, markdown_report, plot_report

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


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def curve(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(rl: list[dict], sft: list[dict], png: Path) -> Path | None:
    panels = [(key, title, rl) for key, title in RL_CURVES if curve(rl, key)[0]]
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


def rl_table(rl: list[dict]) -> str:
    """One row per RL step: the curves' metrics, evidence recall and the step's seconds."""
    keys = [k for k, _ in RL_CURVES] + ["sampling/kept_groups", "env/evidence_recall", "timing_s/step"]
    keys = [k for k in keys if any(k in row for row in rl)]
    lines = ["| step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in rl:
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


def reward_label(out: Path) -> str:
    """The reward as the run's config.json names it, " (<scorer>[, round cost <c>])"; "" without one."""
    config = out / "config.json"
    if not config.exists():
        return ""
    pipeline = json.loads(config.read_text()).get("pipeline", {})
    if "reward" not in pipeline:
        return ""
    cost = pipeline.get("round_cost") or 0
    return f" ({pipeline['reward']}{f', round cost {cost:g}' if cost else ''})"


def read_trajectories(out: Path, label: str, split: str = "test") -> dict[str, dict]:
    """The rows of eval/<label>/<split>/trajectories.jsonl by question id."""
    return {row["id"]: row for row in read_jsonl(out / "eval" / label / split / "trajectories.jsonl")}


def rl_vs_sft(out: Path, modes=("single", "multi"), split: str = "test") -> list[dict]:
    """Per mode evaluated for both models: EM of each on the same questions, the RL - SFT difference
    with its 95 % paired-bootstrap interval, and the questions only one of them answered. Where some of
    the questions are answered by yes or no, a second row leaves those out: there a model scores by
    the answer it always gives, so the row tells reading gains from a changed guess."""
    results = []
    for mode in modes:
        sft, rl = read_trajectories(out, f"sft-{mode}", split), read_trajectories(out, f"rl-{mode}", split)
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
    lines = ["| mode | questions | SFT EM | SFT+RL EM | difference | 95 % interval | gained / lost |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['mode']} | {r['n']} | {r['sft']:.3f} | {r['rl']:.3f} | {r['diff']:+.3f} | "
                     f"[{r['lo']:+.3f}, {r['hi']:+.3f}] | {r['gained']} / {r['lost']} |")
    return "\n".join(lines)


def corpus_titles(out: Path) -> dict[str, str]:
    """Passage titles by id, from the corpus named in OUT/config.json (empty when unknown)."""
    from rag_r1.search.corpus import split_title

    config = out / "config.json"
    corpus = Path(json.loads(config.read_text()).get("corpus", "")) if config.exists() else None
    if corpus is None or not corpus.is_file():
        return {}
    return {row["id"]: split_title(row["contents"])[0] for row in read_jsonl(corpus)}


def question_type(row: dict, titles: dict[str, str]) -> str:
    """The row's own `type` (HotpotQA's), else "comparison" when the question names every supporting
    title (both entities given: one parallel round can find both), else "bridge"."""
    from rag_r1.sft.evidence import named_in

    if row.get("type"):
        return row["type"]
    support = [titles.get(pid) for pid in row.get("supporting_ids") or []]
    if support and all(t and named_in(t, row["question"]) for t in support):
        return "comparison"
    return "bridge"


def type_stats(rows: list[dict], titles: dict[str, str]) -> dict[str, dict]:
    """Per question type of some trajectories: questions, EM, rounds and queries per round."""
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(question_type(r, titles), []).append(r)
    stats = {}
    for kind, mine in sorted(by_kind.items()):
        rounds = sum(r["searches"] for r in mine)
        queries = sum(len(q) for r in mine for q in r["queries"])
        stats[kind] = {"n": len(mine), "em": sum(r["em"] for r in mine) / len(mine),
                       "rounds": rounds / len(mine), "queries_per_round": queries / rounds if rounds else 0.0}
    return stats


def type_table(out: Path, runs, titles: dict[str, str]) -> str:
    """Per evaluated model-mode and question type: questions, EM, rounds and queries per round."""
    lines = ["| model-mode | type | questions | EM | rounds | queries/round |", "|---|---|---|---|---|---|"]
    for run in runs:
        for kind, st in type_stats(list(read_trajectories(out, run.label).values()), titles).items():
            lines.append(f"| {run.label} | {kind} | {st['n']} | {st['em']:.3f} | {st['rounds']:.2f} | "
                         f"{st['queries_per_round']:.2f} |")
    return "\n".join(lines)


def outcome_table(out: Path, runs) -> str | None:
    """Per evaluated model-mode: right answers, wrong ones whose answer was or was not in what the agent
    retrieved, unanswered ones, and wrong answers copied from the question; None when no run kept its text."""
    lines = ["| model-mode | questions | right | wrong, answer retrieved | wrong, answer never retrieved | "
             "no answer | wrong answers copied from the question | yes/no questions: right / answered yes / "
             "yes is right |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        rows = list(read_trajectories(out, run.label).values())
        if rows and all("text" in r for r in rows):
            c = answer_outcomes(rows)
            lines.append(f"| {run.label} | {len(rows)} | {c['right']} | {c['missed_retrieved']} | "
                         f"{c['missed_not_retrieved']} | {c['unanswered']} | {c['copied_question']} | "
                         f"{c['yes_no_right']} of {c['yes_no']} / {c['said_yes']} / {c['gold_yes']} |")
    return "\n".join(lines) if len(lines) > 2 else None


def learning_checks(out: Path, rl: list[dict], titles: dict[str, str]) -> list[str]:
    """What shows RL teaching the agent, each as a line that says whether it holds: EM in multi mode
    rising untrained < SFT < SFT+RL, the RL reward of the last quarter of the steps above the first,
    and comparison questions taking fewer rounds in multi mode than in single mode after RL, at 1.5
    queries per round or more. A check whose runs were not evaluated is left out."""
    def verdict(ok: bool) -> str:
        return "**yes**" if ok else "**no**"

    lines = []
    em = {label: [r["em"] for r in read_trajectories(out, label).values()] for label in
          ("base-multi", "sft-multi", "rl-multi")}
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
    single = type_stats(list(read_trajectories(out, "rl-single").values()), titles).get("comparison")
    multi = type_stats(list(read_trajectories(out, "rl-multi").values()), titles).get("comparison")
    if single and multi:
        ok = multi["rounds"] < single["rounds"] and multi["queries_per_round"] >= 1.5
        lines.append(f"- after RL, comparison questions take fewer rounds in multi mode than in single mode "
                     f"({multi['rounds']:.2f} vs {single['rounds']:.2f}) at 1.5 queries per round or more "
                     f"({multi['queries_per_round']:.2f}): {verdict(ok)}")
    return lines


def write_results_readme(out: Path, wall_seconds: float | None = None, command: str | None = None) -> Path:
    out = Path(out)
    # the dev split (PipelineConfig.dev_questions) is held-out train questions, not a dataset: its own section
    runs = pipeline_order([run for run in load_runs(out / "eval") if run.dataset != "dev"])
    plot_report(runs, out / "eval.png")
    rl = read_jsonl(out / "runs" / "rl" / "metrics.jsonl")
    sft = read_jsonl(out / "runs" / "sft" / "metrics.jsonl")
    curves = plot_curves(rl, sft, out / "curves.png")
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
    if any(read_trajectories(out, r.label) for r in runs):
        parts += ["## By question type", "", type_table(out, runs, titles), ""]
    outcomes = outcome_table(out, runs)
    if outcomes:
        parts += ["## Where the answers went wrong", "",
                  "A wrong answer whose answer was in the retrieved passages is a reading miss; one never retrieved is "
                  "a search miss (a yes/no answer counts as retrieved when every supporting passage was). The last "
                  "column tells reading from a fixed answer on yes/no questions: a model that answers \"no\" to all of "
                  "them is right on every \"no\" question without reading.", "",
                  outcomes, ""]
    if by_round:
        parts += ["## Evidence recall by retrieval round", "", evidence_table(by_round), ""]
        parts += [f"![evidence by round]({evidence_png.name})", ""]
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
