"""OUT/README.md of a recipe run: rag_r1.eval.report's tables, plus what only the recipe has: RL against
SFT on the same questions (per seed and pooled), RL against the guide-only control, the learning
checks, training curves and every RL run step by step, the frontier and stage times.

    python -m recipe.report OUT      # re-write OUT/README.md from what a run left

Reads `OUT/eval/<model>-<mode>/<set>/{summary.json,trajectories.jsonl}` (rag_r1.eval),
`OUT/runs/<run>/metrics.jsonl` (the trainers' jsonl logger: sft, and the RL runs rl, rl_seed<k> and
control), `OUT/frontier/counts.json`, `OUT/config.json` and `OUT/stage_times.jsonl`; writes README.md,
eval.png and curves.png beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
from pathlib import Path

from rag_r1.eval.metrics import is_yes_no
from rag_r1.eval.report import (MISSING, evidence_by_round, evidence_table, load_runs, markdown_report,
                                markdown_table, mean_scores, outcome_table, paired_comparison, paired_table,
                                passage_titles, plot_report, pyplot, read_jsonl, read_trajectories, type_stats,
                                type_table)
from recipe.config import CONTROL

# (metric key in the RL log, panel title); a key missing from every log leaves its panel out.
RL_CURVES = [
    ("sampling/score_mean", "reward per step (the policy's own samples)"),
    ("adv/guide_positive_share", "share of positive advantage on guide rows"),
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


def plot_curves(rl: dict[str, list[dict]], sft: list[dict], png: Path) -> Path | None:
    """A panel per metric of RL_CURVES that some RL run logged, a line per run (`rl`: logs by run name),
    the SFT loss first."""
    panels = [(key, title, rl) for key, title in RL_CURVES if any(curve(log, key)[0] for log in rl.values())]
    if curve(sft, "train/loss")[0]:
        panels.insert(0, ("train/loss", "SFT loss", {"sft": sft}))
    if not panels:
        return None
    plt = pyplot()
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (key, title, logs) in zip(axes.flat, panels):
        drawn = {name: curve(log, key) for name, log in logs.items() if curve(log, key)[0]}
        for name, (steps, values) in drawn.items():
            ax.plot(steps, values, marker="o", markersize=3, label=name)
        if len(drawn) > 1:
            ax.legend(fontsize=7)
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


# (metric key, column, format) of the step-by-step table of every RL run: what the policy's own samples
# scored, how much of the learning signal the guides carried, and how far sampling drifted from training.
RUN_STEP_COLUMNS = [
    ("sampling/score_mean", "reward (own samples)", "{:.3f}"),
    ("adv/guide_positive_share", "guide share of positive advantage", "{:.3f}"),
    ("adv/guided_rows", "guide rows", "{:.0f}"),
    ("actor/entropy", "entropy", "{:.3f}"),
    ("rollout/logprob_diff_max", "log-prob diff max", "{:.3g}"),
]


def runs_table(logs: dict[str, list[dict]]) -> str:
    """One row per step of every RL run (`logs`: its metrics.jsonl rows by run name)."""
    rows = [[name, row["step"], *(fmt.format(row[key]) if isinstance(row.get(key), (int, float)) else MISSING
                                  for key, _, fmt in RUN_STEP_COLUMNS)]
            for name, log in logs.items() for row in log if "step" in row]
    return markdown_table(["run", "step", *(column for _, column, _ in RUN_STEP_COLUMNS)], rows)


SEEDED_RANKS = {"rl": 2, CONTROL: 4}  # a kind of seeded run and the rank of its first seed's model


def model_rank(model: str) -> tuple[int, int]:
    """Where a model's rows go: base, sft, rl, rl_seed<k> by k, control, control_seed<k> by k
    (recipe/config.py: rl_runs names them), then any other."""
    for kind, rank in SEEDED_RANKS.items():
        seed = re.fullmatch(rf"{kind}_seed(\d+)", model)
        if seed:
            return (rank + 1, int(seed.group(1)))
    return ({"base": 0, "sft": 1, **SEEDED_RANKS}.get(model, 6), 0)


def seed_models(names, kind: str = "rl") -> list[str]:
    """The models of one seed each of `kind` (rl: rl, rl_seed<k>; control: control, control_seed<k>)
    among `names`, in seed order."""
    rank = SEEDED_RANKS[kind]
    return sorted({name for name in names if model_rank(name)[0] in (rank, rank + 1)}, key=model_rank)


def evaluated_models(out: Path) -> set[str]:
    """The models with an evaluation directory eval/<model>-<mode>/."""
    root = out / "eval"
    return {path.name.partition("-")[0] for path in root.iterdir() if path.is_dir()} if root.is_dir() else set()


def rl_logs(out: Path) -> dict[str, list[dict]]:
    """The metrics.jsonl rows of every RL run under OUT/runs, by run name, in the recipe's order."""
    names = [path.parent.name for path in (out / "runs").glob("*/metrics.jsonl") if path.parent.name != "sft"]
    return {name: read_jsonl(out / "runs" / name / "metrics.jsonl")
            for name in sorted(names, key=lambda name: (model_rank(name), name))}


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
    """Rows in the order of the recipe (base, sft, rl, rl_seed<k>, control; single before multi),
    unknown labels last."""
    modes = ["single", "multi"]

    def key(run):
        model, _, mode = run.label.partition("-")
        return (model_rank(model), modes.index(mode) if mode in modes else len(modes), run.label, run.dataset)

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


def seed_trajectories(out: Path, mode: str, split: str, kind: str = "rl") -> dict[str, dict[str, dict]]:
    """The trajectories by id of every seed's model of `kind` (rl or control) evaluated in `mode` on
    `split`, by model name."""
    runs = {name: read_trajectories(out / "eval", f"{name}-{mode}", split) for name in
            seed_models(evaluated_models(out), kind)}
    return {name: rows for name, rows in runs.items() if rows}


def rl_vs_sft(out: Path, modes=("single", "multi"), split: str = "test") -> list[dict]:
    """Per mode evaluated for SFT and RL: EM of each on the same questions, the RL - SFT difference
    with its 95 % paired-bootstrap interval, and the questions gained and lost. With several seeds,
    a row per seed's model and one for their mean: each question's EM averaged over the seeds, the
    questions resampled. Where some of the questions are answered by yes or no, a last row leaves
    those out: there a model scores by the answer it always gives, so the row tells reading gains from
    a changed guess."""
    results = []
    for mode in modes:
        sft, seeds = read_trajectories(out / "eval", f"sft-{mode}", split), seed_trajectories(out, mode, split)
        ids = [i for i in sft if seeds and all(i in rows for rows in seeds.values())]
        if not ids:
            continue
        variants = {mode: list(seeds.values())} if len(seeds) == 1 else {
            **{f"{mode}, {name}": [rows] for name, rows in seeds.items()},
            f"{mode}, mean of {len(seeds)} seeds": list(seeds.values())}
        for label, runs in variants.items():
            results.append(paired_comparison(label, mean_scores([sft], ids), mean_scores(runs, ids)))
        open_ids = [i for i in ids if not is_yes_no(sft[i].get("golden_answers", ()))]
        if 0 < len(open_ids) < len(ids):  # for the only seed, or the seeds' mean: the last variant
            results.append(paired_comparison(f"{label}, without yes/no", mean_scores([sft], open_ids),
                                             mean_scores(runs, open_ids)))
    return results


def rl_vs_sft_table(results: list[dict]) -> str:
    return paired_table(results, "mode", "SFT EM", "SFT+RL EM")


def control_comparisons(out: Path, split: str = "test") -> list[tuple[dict, dict, dict]]:
    """Per mode the guide-only controls were evaluated in, on the questions SFT and every seed's control
    and RL model answered: `paired_comparison` rows of SFT -> control, control -> RL and SFT -> RL (with
    several seeds, each question's EM averaged over the seeds of each)."""
    def named(kind: str, runs: list) -> str:
        return kind if len(runs) == 1 else f"{kind} (mean of {len(runs)} seeds)"

    results = []
    for mode in ("single", "multi"):
        sft = read_trajectories(out / "eval", f"sft-{mode}", split)
        controls = list(seed_trajectories(out, mode, split, CONTROL).values())
        seeds = list(seed_trajectories(out, mode, split).values())
        ids = [i for i in sft if controls and seeds and all(i in rows for rows in controls + seeds)]
        if not ids:
            continue
        control, rl = named(CONTROL, controls), named("RL", seeds)
        before, imitation, after = (mean_scores(runs, ids) for runs in ([sft], controls, seeds))
        results.append((paired_comparison(f"{mode}: SFT -> {control}", before, imitation),
                        paired_comparison(f"{mode}: {control} -> {rl}", imitation, after),
                        paired_comparison(f"{mode}: SFT -> {rl}", before, after)))
    return results


def control_table(results: list[tuple[dict, dict, dict]]) -> str:
    return paired_table([row for rows in results for row in rows], "comparison", "EM from", "EM to")


def imitation_share(results: list[tuple[dict, dict, dict]]) -> list[str]:
    """A sentence per mode of `control_comparisons`: how much of RL's gain over SFT the control reaches."""
    lines = []
    for control, _, rl in results:
        mode = control["label"].split(":")[0]
        if rl["diff"] > 0 and control["diff"] <= 0:
            lines.append(f"In {mode} mode, imitation of the guides alone gives {control['diff']:+.3f} EM over SFT: none "
                         f"of RL's {rl['diff']:+.3f}, on {rl['n']} questions.")
        elif rl["diff"] > 0:
            lines.append(f"In {mode} mode, imitation of the guides alone gives {control['diff']:+.3f} EM of RL's "
                         f"{rl['diff']:+.3f} over SFT ({control['diff'] / rl['diff']:.0%}), on {rl['n']} questions.")
        else:
            lines.append(f"In {mode} mode RL gains no EM over SFT ({rl['diff']:+.3f}); imitation of the guides alone "
                         f"gives {control['diff']:+.3f}, on {rl['n']} questions.")
    return lines


def corpus_titles(out: Path) -> dict[str, str]:
    """Passage titles by id, from the corpus named in OUT/config.json (empty when unknown)."""
    corpus = run_config(out).get("corpus")
    if corpus is None or not Path(corpus).is_file():
        return {}
    return passage_titles(Path(corpus))


def learning_checks(out: Path, rl: list[dict], titles: dict[str, str]) -> list[str]:
    """What shows RL teaching the agent, each as a line that says whether it holds: EM in multi mode
    rising untrained < SFT < SFT+RL (SFT < SFT+RL without the untrained model), the RL reward of the
    last quarter of the steps above the first, comparison questions taking fewer rounds in multi mode
    than in single mode after RL, at 1.5 queries per round or more, and RL's EM above the guide-only
    control's (more than imitation of the guides). A check whose runs were not evaluated is left out."""
    def verdict(ok: bool) -> str:
        return "**yes**" if ok else "**no**"

    def test_rows(label: str) -> list[dict]:
        return list(read_trajectories(out / "eval", label, "test").values())

    lines = []
    # the untrained model's evaluation may be left out (recipe.eval_runs): the order is then SFT < SFT+RL
    em = {name: [r["em"] for r in test_rows(label)]
          for name, label in (("untrained", "base-multi"), ("SFT", "sft-multi"), ("SFT+RL", "rl-multi"))}
    em = {name: rows for name, rows in em.items() if rows}
    if "SFT" in em and "SFT+RL" in em:
        means = [sum(v) / len(v) for v in em.values()]
        lines.append(f"- EM in multi mode rises {' < '.join(em)} ({' < '.join(f'{m:.3f}' for m in means)}): "
                     f"{verdict(all(a < b for a, b in zip(means, means[1:])))}")
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
    for _, above, _ in control_comparisons(out):
        mode, _, pair = above["label"].partition(": ")
        control, _, rl_name = pair.partition(" -> ")
        lines.append(f"- {rl_name} above the guide-only {control} in {mode} mode ({above['before']:.3f} -> "
                     f"{above['after']:.3f}, 95 % interval of the difference [{above['lo']:+.3f}, "
                     f"{above['hi']:+.3f}]): {verdict(above['diff'] > 0)}")
    return lines


def imitation_section(out: Path) -> list[str]:
    """The README's section on RL against the guide-only control ([] without a control evaluated)."""
    results = control_comparisons(out)
    if not results:
        return []
    return ["## How much of RL's gain is imitation of the guides?", "",
            "A guide-only control runs beside each RL seed (`control` beside `rl`, `control_seed<k>` beside "
            "`rl_seed<k>`): that seed's RL run, with the same SFT model, questions, "
            "guides (at the same algorithm.guides.guided_weight), steps, LoRA and learning rate, trained on the guides "
            "alone, each at the advantage a guide gets in a group whose own samples all failed, with nothing sampled "
            "(algorithm.guides.only). Each row compares two models on the same "
            "questions (from -> to; 95 % paired bootstrap; with several seeds, each question's EM averaged over "
            "the seeds of each).", "", control_table(results), "",
            *imitation_share(results), ""]


def write_results_readme(out: Path, wall_seconds: float | None = None, command: str | None = None) -> Path:
    out = Path(out)
    # the dev split (recipe.dev_questions) is held-out train questions, not a dataset: its own section
    runs = recipe_order([run for run in load_runs(out / "eval") if run.dataset != "dev"])
    plot_report(runs, out / "eval.png")
    logs = rl_logs(out)
    rl = logs.get("rl", [])
    sft = read_jsonl(out / "runs" / "sft" / "metrics.jsonl", missing_ok=True)
    curves = plot_curves(logs, sft, out / "curves.png")
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
                  "paired bootstrap over questions (10,000 resamples). With several seeds (recipe.rl_seeds), a row "
                  "per seed's model (rl: the first seed, rl_seed<k>: seed k) and one for their mean, where each "
                  "question's EM is averaged over the seeds before the questions are resampled.", "",
                  rl_vs_sft_table(comparison), ""]
    parts += imitation_section(out)
    dev = rl_vs_sft(out, split="dev")
    if dev:
        parts += ["## RL vs SFT on held-out train questions (dev)", "",
                  f"The same comparison on {dev[0]['n']} train questions that neither SFT nor RL drew "
                  "(`eval/dev_questions.jsonl`): the set to compare settings on, so that the test questions above "
                  "decide nothing.", "", rl_vs_sft_table(dev), ""]
        dev_control = control_comparisons(out, split="dev")
        if dev_control:
            parts += [control_table(dev_control), "", *imitation_share(dev_control), ""]
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
    if logs:
        parts += ["## RL runs step by step", "",
                  "Per step of every RL run: the mean reward of the policy's own samples (guides left out), the share "
                  "of the trained batch's positive advantage that guide rows carry (1: only the guides teach), the "
                  "guide rows trained on, the policy's entropy, and the largest difference between the log-prob "
                  "the rollout engine sampled a token with and the trainer's.", "", runs_table(logs), ""]
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
