"""The results table of a set of evaluation runs: Markdown like the paper's, plus a PNG.

    python -m rag_r1.eval.report ROOT [--out DIR]

ROOT holds one run per `ROOT/<label>/<dataset>/summary.json` (what `scripts/eval/eval_sets.py`
writes; a label is e.g. `single` or `multi`, or `sft-multi`). Two tables: EM per dataset and their
average (one row per label, the paper's Table), and what multi-query search changes, single vs
multi side by side: EM, F1, retrieval rounds, queries per round, generated tokens, seconds per
question and evidence recall, over all of a label's questions.

The per-question tables read each run's `trajectories.jsonl` beside its summary (rag_r1.eval): by
question type, where the wrong answers went wrong, and evidence recall round by round. The recipe's
report (recipe/report.py) builds on all of them.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The paper's column order (general QA, then multi-hop) and names; other sets follow in given order.
DATASET_NAMES = {
    "nq": "NQ", "triviaqa": "TriviaQA", "popqa": "PopQA", "hotpotqa": "HotpotQA",
    "2wikimultihopqa": "2Wiki", "musique": "Musique", "bamboogle": "Bamboogle",
}
MISSING = "–"


@dataclass(frozen=True)
class EvalRun:
    label: str  # the model/mode row this run belongs to
    dataset: str  # question set name (file stem)
    summary: dict  # summary.json of the run


def load_runs(root: Path) -> list[EvalRun]:
    """Every `root/<label>/<dataset>/summary.json`, sorted by path."""
    paths = sorted(Path(root).glob("*/*/summary.json"))
    if not paths:
        raise FileNotFoundError(f"no */*/summary.json under {root}")
    return [EvalRun(p.parent.parent.name, p.parent.name, json.loads(p.read_text())) for p in paths]


def read_jsonl(path: Path, missing_ok: bool = False) -> list[dict]:
    """The rows of a JSONL file (blank lines skipped); [] for a missing file when `missing_ok`."""
    path = Path(path)
    if missing_ok and not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_trajectories(root: Path, label: str, dataset: str) -> dict[str, dict]:
    """The rows of `root/<label>/<dataset>/trajectories.jsonl` by question id ({} when there is none)."""
    return {row["id"]: row for row in read_jsonl(Path(root) / label / dataset / "trajectories.jsonl", missing_ok=True)}


def _ordered(values: Sequence[str], known: Sequence[str] = ()) -> list[str]:
    """Unique values, those in `known` first in its order, then the rest in order of appearance."""
    unique = list(dict.fromkeys(values))
    return [k for k in known if k in unique] + [v for v in unique if v not in known]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [_row(header), _row(["---"] * len(header))] + [_row([str(c) for c in r]) for r in rows]
    return "\n".join(lines)


def mean_scores(runs: Sequence[dict[str, dict]], ids: Sequence[str], key: str = "em") -> list[float]:
    """Per question of `ids`, the mean of `key` over `runs` (each a run's trajectories by id).

    >>> mean_scores([{"a": {"em": 1.0}, "b": {"em": 0.0}}, {"a": {"em": 0.0}, "b": {"em": 0.0}}], ["a", "b"])
    [0.5, 0.0]
    """
    return [sum(run[i][key] for run in runs) / len(runs) for i in ids]


def paired_comparison(label: str, before: Sequence[float], after: Sequence[float]) -> dict:
    """Two models' scores on the same questions, in the same order: both means, the mean difference
    after - before with its 95 % paired-bootstrap interval over questions (`diff`, `lo`, `hi`, `n`), and
    the questions scored higher after (`gained`) and lower (`lost`)."""
    from rag_r1.eval.metrics import paired_bootstrap

    return {"label": label, "before": sum(before) / len(before), "after": sum(after) / len(after),
            "gained": sum(a > b for a, b in zip(after, before)), "lost": sum(a < b for a, b in zip(after, before)),
            **paired_bootstrap(before, after)}


def paired_table(rows: Sequence[dict], first: str, before: str, after: str) -> str:
    """`paired_comparison` rows as a table: `first` heads their labels, `before` and `after` the two means."""
    cells = [[r["label"], r["n"], f"{r['before']:.3f}", f"{r['after']:.3f}", f"{r['diff']:+.3f}",
              f"[{r['lo']:+.3f}, {r['hi']:+.3f}]", f"{r['gained']} / {r['lost']}"] for r in rows]
    return markdown_table([first, "questions", before, after, "difference", "95 % interval", "gained / lost"], cells)


def pyplot():
    """matplotlib's pyplot drawing to files only: no display on servers and CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def em_table(runs: Sequence[EvalRun]) -> str:
    """EM per dataset and their plain mean (as the paper averages); the mean is left out (–) for a
    label that lacks some dataset, since a mean over other sets would not be comparable."""
    labels = _ordered([r.label for r in runs])
    datasets = _ordered([r.dataset for r in runs], list(DATASET_NAMES))
    em = {(r.label, r.dataset): r.summary["em"] for r in runs}
    rows = []
    for label in labels:
        scores = [em.get((label, d)) for d in datasets]
        cells = [MISSING if s is None else f"{s:.3f}" for s in scores]
        average = MISSING if None in scores else f"{sum(scores) / len(scores):.3f}"
        rows.append([label, *cells, average])
    return markdown_table(["Method", *[DATASET_NAMES.get(d, d) for d in datasets], "Avg."], rows)


def _weighted_mean(key: str, summaries: Sequence[dict]) -> float:
    return sum(s[key] * s["n"] for s in summaries) / sum(s["n"] for s in summaries)


def label_totals(runs: Sequence[EvalRun]) -> dict[str, dict[str, float | None]]:
    """Per label, question-weighted means over its datasets of what multi-query search changes.

    Queries per round is pooled as total queries over total rounds. Evidence recall and passages
    read pool only the runs that measured them (sets with supporting_ids), and are None when none did.
    """
    totals = {}
    for label in _ordered([r.label for r in runs]):
        mine = [r.summary for r in runs if r.label == label]
        n = sum(s["n"] for s in mine)
        rounds = sum(s["rounds"] * s["n"] for s in mine)
        queries = sum(s["queries_per_round"] * s["rounds"] * s["n"] for s in mine)
        with_evidence = [s for s in mine if "evidence_recall" in s]
        totals[label] = {
            "n": n,
            "em": _weighted_mean("em", mine),
            "f1": _weighted_mean("f1", mine),
            "rounds": rounds / n,
            "queries_per_round": queries / rounds if rounds else 0.0,
            "tokens": _weighted_mean("tokens", mine),
            "seconds_per_question": _weighted_mean("seconds_per_question", mine),
            "evidence_recall": _weighted_mean("evidence_recall", with_evidence) if with_evidence else None,
            "evidence_all": _weighted_mean("evidence_all", with_evidence) if with_evidence else None,
            "retrieved_per_question": (_weighted_mean("retrieved_per_question", with_evidence)
                                       if with_evidence else None),
        }
    return totals


# (column header, key of label_totals, format)
SEARCH_COLUMNS = [
    ("n", "n", "{:d}"), ("EM", "em", "{:.3f}"), ("F1", "f1", "{:.3f}"), ("Rounds", "rounds", "{:.2f}"),
    ("Queries/round", "queries_per_round", "{:.2f}"), ("Tokens", "tokens", "{:.1f}"),
    ("s/question", "seconds_per_question", "{:.2f}"), ("Evidence recall", "evidence_recall", "{:.3f}"),
    ("All evidence", "evidence_all", "{:.3f}"), ("Passages read", "retrieved_per_question", "{:.1f}"),
]


def search_table(runs: Sequence[EvalRun]) -> str:
    """One row per label: the columns of SEARCH_COLUMNS over all its questions."""
    rows = []
    for label, t in label_totals(runs).items():
        rows.append([label] + [MISSING if t[key] is None else fmt.format(t[key]) for _, key, fmt in SEARCH_COLUMNS])
    return markdown_table(["Method"] + [h for h, _, _ in SEARCH_COLUMNS], rows)


def markdown_report(runs: Sequence[EvalRun]) -> str:
    return (
        "## Exact match\n\n" + em_table(runs) + "\n\n"
        "## Search behaviour (over all questions of a row)\n\n" + search_table(runs) + "\n"
    )


def plot_report(runs: Sequence[EvalRun], png: Path) -> Path:
    """Six panels: EM per dataset, rounds, queries per round, tokens, seconds per question (one
    bar per label) and evidence recall by retrieval round (one line per label)."""
    plt = pyplot()
    labels = _ordered([r.label for r in runs])
    datasets = _ordered([r.dataset for r in runs], list(DATASET_NAMES))
    totals = label_totals(runs)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))

    ax = axes[0, 0]
    width = 0.8 / len(labels)
    em = {(r.label, r.dataset): r.summary["em"] for r in runs}
    for i, label in enumerate(labels):
        xs = [j + i * width for j in range(len(datasets))]
        ax.bar(xs, [em.get((label, d), 0.0) for d in datasets], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(datasets))])
    ax.set_xticklabels([DATASET_NAMES.get(d, d) for d in datasets], rotation=30, ha="right")
    ax.set_title("Exact match")
    ax.legend(fontsize=8)

    panels = [("rounds", "Retrieval rounds / question"), ("queries_per_round", "Queries / round"),
              ("tokens", "Generated tokens / question"), ("seconds_per_question", "Seconds / question")]
    for ax, (key, title) in zip(axes.flat[1:5], panels):
        ax.bar(labels, [totals[label][key] for label in labels], color=[f"C{i}" for i in range(len(labels))])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)

    ax = axes[1, 2]
    ax.set_title("Evidence recall after round k")
    curves = [(r.label, r.dataset, r.summary["evidence_recall_by_round"]) for r in runs
              if r.summary.get("evidence_recall_by_round")]
    for label, dataset, curve in curves:
        name = label if len(datasets) == 1 else f"{label} / {DATASET_NAMES.get(dataset, dataset)}"
        ax.plot(range(1, len(curve) + 1), curve, marker="o", label=name)
    if curves:
        ax.set_xticks(range(1, max(len(c) for _, _, c in curves) + 1))
        ax.set_xlabel("round")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no supporting_ids in these sets", ha="center", va="center", transform=ax.transAxes)

    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def evidence_by_round(runs: Sequence[EvalRun]) -> dict[str, list[float]]:
    """Evidence recall after each retrieval round, per label of the runs that measured it."""
    return {r.label: r.summary["evidence_recall_by_round"] for r in runs if "evidence_recall_by_round" in r.summary}


def evidence_table(by_label: dict[str, list[float]]) -> str:
    """One row per label: evidence recall after round 1, 2, ... (– past a label's last round)."""
    if not by_label:
        return ""
    width = max(len(v) for v in by_label.values())
    rows = [[label, *(f"{v:.3f}" for v in values), *[MISSING] * (width - len(values))]
            for label, values in by_label.items()]
    return markdown_table(["Method", *(f"after round {i}" for i in range(1, width + 1))], rows)


def passage_titles(corpus: Path) -> dict[str, str]:
    """Passage titles by id of a corpus JSONL (rag_r1.search.corpus rows)."""
    from rag_r1.search.corpus import split_title

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


def type_table(root: Path, runs: Sequence[EvalRun], titles: dict[str, str]) -> str:
    """Per run and question type: questions, EM, rounds and queries per round."""
    rows = [[run.label, kind, st["n"], f"{st['em']:.3f}", f"{st['rounds']:.2f}", f"{st['queries_per_round']:.2f}"]
            for run in runs
            for kind, st in type_stats(list(read_trajectories(root, run.label, run.dataset).values()), titles).items()]
    return markdown_table(["model-mode", "type", "questions", "EM", "rounds", "queries/round"], rows)


def outcome_table(root: Path, runs: Sequence[EvalRun]) -> str | None:
    """Per run: right answers, wrong ones whose answer was or was not in what the agent retrieved,
    unanswered ones, and wrong answers copied from the question; None when no run kept its text."""
    from rag_r1.eval.metrics import answer_outcomes

    rows = []
    for run in runs:
        trajectories = list(read_trajectories(root, run.label, run.dataset).values())
        if trajectories and all("text" in r for r in trajectories):
            c = answer_outcomes(trajectories)
            rows.append([run.label, len(trajectories), c["right"], c["missed_retrieved"], c["missed_not_retrieved"],
                         c["unanswered"], c["copied_question"],
                         f"{c['yes_no_right']} of {c['yes_no']} / {c['said_yes']} / {c['gold_yes']}"])
    if not rows:
        return None
    return markdown_table(["model-mode", "questions", "right", "wrong, answer retrieved", "wrong, answer never retrieved",
                           "no answer", "wrong answers copied from the question",
                           "yes/no questions: right / answered yes / yes is right"], rows)


def write_report(runs: Sequence[EvalRun], out_dir: Path) -> tuple[Path, Path]:
    """Write `report.md` and `report.png` under `out_dir`; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    md.write_text("# Evaluation\n\n" + markdown_report(runs) + "\n![summary](report.png)\n", encoding="utf-8")
    return md, plot_report(runs, out_dir / "report.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Tables and a plot of evaluation runs.")
    parser.add_argument("root", type=Path, help="directory with <label>/<dataset>/summary.json")
    parser.add_argument("--out", type=Path, default=None, help="where report.md/.png go (default: ROOT)")
    args = parser.parse_args(argv)
    runs = load_runs(args.root)
    md, png = write_report(runs, args.out or args.root)
    print(markdown_report(runs))
    print(f"wrote {md} and {png}")


if __name__ == "__main__":
    main()
