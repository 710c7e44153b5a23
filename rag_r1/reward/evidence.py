"""Evidence recall of what a trajectory retrieved (pure): shared by the reward's optional evidence
term and by evaluation/training metrics, so both count the same way."""
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
