"""Run a question set through a solver batch by batch, keeping every trajectory on disk.

`evaluate(questions, solve, out_dir)` writes `out_dir/trajectories.jsonl` (one row per question,
appended batch by batch and flushed, so a killed run loses at most the batch in flight) and
`out_dir/summary.json` (`rag_r1.eval.metrics.summarize` of the set's rows). Re-running into the
same directory skips every question whose row is already there.

A solver maps a batch of questions to what the agent did for each, in order:
`{"text", "answer", "turns", "searches", "queries", "retrieved", "tokens"}` (`rag_r1.eval.agent`
builds the real one around the search agent); the runner adds the question's fields, the scores
and the seconds.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from rag_r1.eval.metrics import answer_scores, summarize

Solver = Callable[[list[dict]], list[dict]]
# rows of questions a resumed, smaller sample left out (see evaluate)
SET_ASIDE = "trajectories.set_aside.jsonl"
SOLVER_KEYS = ("text", "answer", "turns", "searches", "queries", "retrieved", "tokens")


def _first(*values):
    """The first value that is not None (parquet structs hold None for a key a row lacks)."""
    return next((v for v in values if v is not None), None)


def _question_row(raw: dict, index: int, where: str) -> dict:
    """`{"id", "question", "golden_answers", ["supporting_ids"]}` of a JSONL row or a parquet row
    in veRL's schema (question and ids may sit in `extra_info`, answers in `reward_model`)."""
    extra = raw.get("extra_info") or {}
    question = _first(raw.get("question"), extra.get("question"))
    if question is None:
        raise ValueError(f"{where}: no 'question' field (nor extra_info.question); keys: {sorted(raw)}")
    golden = raw.get("golden_answers")
    if golden is None and raw.get("reward_model"):
        truth = raw["reward_model"]["ground_truth"]
        golden = truth["target"] if isinstance(truth, dict) else truth
    if golden is None:
        raise ValueError(f"{where}: no 'golden_answers' (nor reward_model.ground_truth)")
    row = {
        "id": str(_first(raw.get("id"), extra.get("id"), extra.get("index"), index)),
        "question": str(question),
        # str(): parquet hands back numpy arrays of numpy strings where the writer had lists.
        "golden_answers": [str(golden)] if isinstance(golden, str) else [str(g) for g in golden],
    }
    supporting = _first(raw.get("supporting_ids"), extra.get("supporting_ids"))
    if supporting is not None:
        row["supporting_ids"] = [str(s) for s in supporting]
    kind = _first(raw.get("type"), extra.get("type"))
    if kind is not None:  # HotpotQA's question type (bridge / comparison), kept for per-type reports
        row["type"] = str(kind)
    return row


def load_questions(path: str | Path, limit: int | None = None) -> list[dict]:
    """Questions of a FlashRAG JSONL file or one of our veRL parquet files, first `limit` only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file {path} not found")
    if path.suffix == ".parquet":
        import pandas as pd

        records = pd.read_parquet(path).to_dict("records")
    elif path.suffix in (".jsonl", ".json"):
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise ValueError(f"question file {path}: expected .jsonl or .parquet")
    rows = [_question_row(r, i, f"{path} row {i}") for i, r in enumerate(records[:limit])]
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            # Resuming finds finished questions by id, so ids must be unique.
            raise ValueError(f"{path}: id {row['id']!r} occurs twice")
        seen.add(row["id"])
    return rows


class TrajectoryWriter:
    """Appends rows to a JSONL file and knows which ids it already holds.

    Every row is one write ending in a newline, so a run killed while writing leaves at most an
    unterminated last line: it is cut off on open (its question simply runs again). A complete
    line that is not JSON means the file was damaged otherwise, and is an error.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: dict[str, dict] = {}
        if self.path.exists():
            self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        data = self.path.read_bytes()
        *complete, tail = data.split(b"\n")
        for i, line in enumerate(complete):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path} line {i + 1} is not JSON ({err}); move the file away") from err
            self.rows[row["id"]] = row
        if tail:
            with open(self.path, "r+b") as f:
                f.truncate(len(data) - len(tail))

    def write(self, rows: Sequence[dict]) -> None:
        for row in rows:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.rows[row["id"]] = row
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    @classmethod
    def read(cls, path: Path) -> dict[str, dict]:
        """The rows of a file the writer wrote, by id (a cut last line dropped, as on open)."""
        writer = cls(path)
        writer.close()
        return writer.rows


def write_rows(path: Path, rows: Sequence[dict]) -> None:
    """Replace `path` with these rows in one step (a temporary file renamed over it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)


def score_rows(batch: list[dict], outputs: list[dict], seconds: float) -> list[dict]:
    """Trajectory rows of a solved batch; each question is charged an equal share of the batch's
    wall time, since the agent advances a whole batch together."""
    if len(outputs) != len(batch):
        raise RuntimeError(f"solver returned {len(outputs)} results for {len(batch)} questions")
    rows = []
    for question, out in zip(batch, outputs):
        missing = [k for k in SOLVER_KEYS if k not in out]
        if missing:
            raise RuntimeError(f"solver result for {question['id']} lacks {missing}")
        row = dict(question)
        row.update({k: out[k] for k in SOLVER_KEYS})
        row.update(answer_scores(out["answer"], question["golden_answers"]))
        row["seconds"] = seconds / len(batch)
        rows.append(row)
    return rows


def evaluate(questions: list[dict], solve: Solver, out_dir: str | Path, batch_size: int = 8) -> dict:
    """Solve every question not yet in `out_dir/trajectories.jsonl`, then write and return the
    summary of all of `questions` (resumed rows included). A row is reused only for the same id and
    question text: another set whose ids collide is refused, not silently scored with old answers.
    Afterwards trajectories.jsonl holds exactly the summarized questions; rows of
    questions outside this sample (a resume on a smaller one) move to trajectories.set_aside.jsonl,
    where a later, larger resume finds them again."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    aside_path = out_dir / SET_ASIDE
    aside = TrajectoryWriter.read(aside_path) if aside_path.exists() else {}
    writer = TrajectoryWriter(out_dir / "trajectories.jsonl")
    try:
        known = {**aside, **writer.rows}
        clash = [q["id"] for q in questions if q["id"] in known and known[q["id"]].get("question") != q["question"]]
        if clash:
            raise ValueError(f"{out_dir / 'trajectories.jsonl'} holds other questions under {len(clash)} of these "
                             f"ids (first: {clash[0]!r}); use another output directory")
        todo = [q for q in questions if q["id"] not in known]
        with tqdm(total=len(questions), initial=len(questions) - len(todo), desc="eval", unit="q") as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                t0 = time.perf_counter()
                outputs = solve(batch)
                writer.write(score_rows(batch, outputs, time.perf_counter() - t0))
                bar.update(len(batch))
        known.update(writer.rows)
        rows = [known[q["id"]] for q in questions]
    finally:
        writer.close()
    wanted = {q["id"] for q in questions}
    others = [row for qid, row in known.items() if qid not in wanted]
    if others or aside:  # otherwise trajectories.jsonl already holds exactly these rows
        # set-aside rows first: a crash between the two writes leaves a row in both files, never in neither
        if others:
            write_rows(aside_path, others)
        write_rows(writer.path, rows)
        if not others:
            aside_path.unlink(missing_ok=True)
    summary = summarize(rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
