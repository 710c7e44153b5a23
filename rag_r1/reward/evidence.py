"""Evidence recall of what a trajectory retrieved (pure): shared by the reward's optional evidence
term, the training loop's env/evidence_* metrics and evaluation, so all three count the same way."""
from __future__ import annotations

from collections.abc import Sequence


def evidence_by_round(retrieved: Sequence[Sequence[str]], supporting_ids: Sequence[str]) -> list[float]:
    """Share of `supporting_ids` found in everything retrieved up to round 1, 2, ... (cumulative:
    a passage retrieved in several rounds counts once). Empty when nothing was retrieved."""
    wanted = set(supporting_ids)
    seen: set[str] = set()
    recalls = []
    for ids in retrieved:
        seen.update(ids)
        recalls.append(len(wanted & seen) / len(wanted))
    return recalls


def evidence_metrics(rows: Sequence[dict]) -> dict[str, float | list[float]]:
    """Evidence recall over the rows that carry `supporting_ids`; `{}` when none do.

    - `evidence_recall`: mean share of a question's supporting ids found anywhere in what it retrieved;
    - `evidence_all`: share of questions with all of them found;
    - `evidence_recall_by_round`: the same mean after round 1, 2, ... up to the longest trajectory
      (a trajectory that stopped searching keeps its last value; one that never searched counts 0);
    - `retrieved_per_question`: distinct passages retrieved per question (passages read).
    """
    rows = [r for r in rows if r.get("supporting_ids")]
    if not rows:
        return {}
    curves = [evidence_by_round(r["retrieved"], r["supporting_ids"]) for r in rows]
    finals = [c[-1] if c else 0.0 for c in curves]
    n_rounds = max(len(c) for c in curves)

    def after(curve: list[float], k: int) -> float:
        return curve[min(k, len(curve)) - 1] if curve else 0.0

    return {
        "evidence_recall": sum(finals) / len(rows),
        "evidence_all": sum(f == 1.0 for f in finals) / len(rows),
        "evidence_recall_by_round": [sum(after(c, k) for c in curves) / len(rows) for k in range(1, n_rounds + 1)],
        "retrieved_per_question": sum(len({i for ids in r["retrieved"] for i in ids}) for r in rows) / len(rows),
    }
