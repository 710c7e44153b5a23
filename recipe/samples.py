"""Seeded question samples the recipe's stages draw, and the file dates that tell a stage its input changed."""
from __future__ import annotations

import json
import random
from pathlib import Path


def sampled(questions: Path, limit: int | None, out: Path, seed: int, by_type: bool = False) -> Path:
    """`limit` rows of a JSONL file drawn with `seed`, in file order, written to `out` (the file itself
    when it is no longer). A sample, not the first rows: a converted set may be sorted by question
    type (hotpotqa_closed lists its bridge questions before its comparisons). The draw depends on the
    seed and `out`'s name, so each use gets its own sample; it is drawn again on every call, so a
    resumed run with another seed or limit does not reuse a stale file.
    `by_type`: as many rows of each `type` as there are (evenly_by_type)."""
    rows = questions.read_text(encoding="utf-8").splitlines()
    if limit is None or len(rows) <= limit:
        return questions
    rng = random.Random(f"{seed}:{out.name}")
    if by_type:
        picked = evenly_by_type([json.loads(row).get("type") for row in rows], limit, rng, questions)
    else:
        picked = sorted(rng.sample(range(len(rows)), limit))
    return write_if_changed(out, "".join(rows[i] + "\n" for i in picked))


def evenly_by_type(kinds: list[str | None], limit: int, rng: random.Random, source: Path) -> list[int]:
    """`limit` row indices, sorted, taken in turns from each kind (a kind that runs out leaves its
    turns to the others), each kind's rows in an order drawn by `rng`."""
    if None in kinds:
        raise SystemExit(f"recipe.rl_balance_types: {source} has rows without a `type` field to balance over")
    queues = {kind: [i for i, k in enumerate(kinds) if k == kind] for kind in sorted(set(kinds))}
    for queue in queues.values():
        rng.shuffle(queue)
    picked: list[int] = []
    while len(picked) < limit:
        for queue in queues.values():
            if queue and len(picked) < limit:
                picked.append(queue.pop())
    return sorted(picked)


def write_if_changed(path: Path, text: str) -> Path:
    """Write `text` to `path` unless it already holds it: a question sample keeps its modification time
    while its rows stay the same, which is what `built_from` reads."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def built_from(product: Path, source: Path) -> bool:
    """Whether `product` exists and was made after `source` last changed. The question samples are
    rewritten only when their rows change (`write_if_changed`), so a resumed run with another draw
    (seed, sizes, rl_yes_no) rebuilds what was made from the old one instead of training on it."""
    return product.exists() and product.stat().st_mtime >= source.stat().st_mtime
