"""Turn a multi-hop QA file that ships its own paragraphs into a closed passage corpus + questions.

    python -m scripts.data_process.closed_corpus --format hotpotqa --input hotpot_dev_distractor_v1.json \
        --out data/hotpotqa_closed [--test-share 0.2] [--seed 0]
    python -m scripts.data_process.closed_corpus --format musique --input musique_ans_v1.0_dev.jsonl \
        --out data/musique_closed --test-share 0.2

Formats (a JSON list or JSONL, either way):
- `hotpotqa`: the official HotpotQA / 2WikiMultiHopQA layout, `{"_id", "question", "answer",
  "supporting_facts": [[title, sentence_index], ...], "context": [[title, [sentence, ...]], ...]}`;
  a paragraph's text is its sentences, stripped and joined by one space; its supporting paragraphs
  are the context paragraphs whose titles appear in `supporting_facts`.
- `musique`: the official MuSiQue layout, `{"id", "question", "answer", "answer_aliases",
  "paragraphs": [{"idx", "title", "paragraph_text", "is_supporting"}, ...]}`; golden answers are
  the answer then its aliases; rows marked `"answerable": false` (MuSiQue-Full) are skipped.

Output in DIR:
- `corpus.jsonl`: `{"id": "<prefix><n>", "contents": "\"Title\"\ntext"}`, every distinct
  (title, text) paragraph once, numbered in order of first appearance;
- `questions.jsonl`, or with `--test-share` `train.jsonl` + `test.jsonl`:
  `{"id", "question", "golden_answers": [...], "supporting_ids": [...]}`.
The split puts the `round(share * n)` questions with the smallest hash of (seed, question id) in
test, so it depends only on the ids and the seed, never on file order. Rows without paragraphs
are skipped and counted; a malformed row stops the run with an error naming the file and row.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm


class MalformedRow(ValueError):
    pass


@dataclass
class Paragraph:
    title: str
    text: str
    supporting: bool


@dataclass
class Example:
    id: str
    question: str
    answers: list[str]
    paragraphs: list[Paragraph]


@dataclass
class ConversionStats:
    questions: int = 0
    passages: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    supporting_titles_missing: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def read_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(1-based row number, parsed row) of a JSON list or a JSONL file."""
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with path.open(encoding="utf-8") as f:
        first = f.read(1)
        while first.isspace():
            first = f.read(1)
        f.seek(0)
        if first == "[":
            try:
                rows = json.load(f)
            except json.JSONDecodeError as error:
                raise MalformedRow(f"{path}: not valid JSON ({error})") from None
            yield from enumerate(rows, start=1)
            return
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise MalformedRow(f"{path}: row {number} is not valid JSON ({error.msg})") from None


def _require(row: dict, key: str, kind: type, where: str):
    if key not in row:
        raise MalformedRow(f"{where}: missing key {key!r}")
    if not isinstance(row[key], kind):
        raise MalformedRow(f"{where}: {key!r} must be {kind.__name__}, got {type(row[key]).__name__}")
    return row[key]


def _question_fields(row: object, id_key: str, where: str) -> tuple[str, str, str]:
    if not isinstance(row, dict):
        raise MalformedRow(f"{where}: expected a JSON object, got {type(row).__name__}")
    question_id = row.get(id_key)
    if not isinstance(question_id, (str, int)) or question_id == "":
        raise MalformedRow(f"{where}: missing key {id_key!r} (the question id)")
    where = f"{where} (id {question_id})"
    question = _require(row, "question", str, where).strip()
    if not question:
        raise MalformedRow(f"{where}: empty question")
    answer = _require(row, "answer", str, where).strip()
    return str(question_id), question, answer


def parse_hotpotqa(row: object, where: str) -> tuple[Example, int]:
    """An Example from a HotpotQA/2Wiki row, and how many supporting titles were not in its context."""
    question_id, question, answer = _question_fields(row, "_id", where)
    where = f"{where} (id {question_id})"
    context = row.get("context") or []
    if not isinstance(context, list):
        raise MalformedRow(f"{where}: 'context' must be a list of [title, [sentence, ...]]")
    supporting_titles = []
    for fact in row.get("supporting_facts") or []:
        if not (isinstance(fact, list) and fact and isinstance(fact[0], str)):
            raise MalformedRow(f"{where}: a supporting fact must be [title, sentence_index], got {fact!r}")
        supporting_titles.append(fact[0])
    paragraphs = []
    for item in context:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], list) and all(isinstance(s, str) for s in item[1])):
            raise MalformedRow(f"{where}: a context entry must be [title, [sentence, ...]], got {str(item)[:80]}")
        title, sentences = item
        text = " ".join(s.strip() for s in sentences if s.strip())
        paragraphs.append(Paragraph(title.strip(), text, title in supporting_titles))
    context_titles = {item[0] for item in context}
    missing = len({t for t in supporting_titles if t not in context_titles})
    return Example(question_id, question, [answer], paragraphs), missing


def parse_musique(row: object, where: str) -> Example:
    question_id, question, answer = _question_fields(row, "id", where)
    where = f"{where} (id {question_id})"
    aliases = row.get("answer_aliases") or []
    if not (isinstance(aliases, list) and all(isinstance(a, str) for a in aliases)):
        raise MalformedRow(f"{where}: 'answer_aliases' must be a list of strings")
    answers = list(dict.fromkeys(a.strip() for a in [answer, *aliases] if a.strip()))
    paragraphs = []
    for item in row.get("paragraphs") or []:
        if not isinstance(item, dict):
            raise MalformedRow(f"{where}: a paragraph must be a JSON object, got {str(item)[:80]}")
        title = _require(item, "title", str, where).strip()
        text = _require(item, "paragraph_text", str, where).strip()
        paragraphs.append(Paragraph(title, text, bool(item.get("is_supporting", False))))
    return Example(question_id, question, answers, paragraphs)


class PassagePool:
    """Distinct (title, text) paragraphs, each with one id, in order of first appearance."""

    def __init__(self, id_prefix: str):
        self.id_prefix = id_prefix
        self.ids: dict[tuple[str, str], str] = {}

    def add(self, paragraph: Paragraph) -> str:
        key = (paragraph.title, paragraph.text)
        if key not in self.ids:
            self.ids[key] = f"{self.id_prefix}{len(self.ids)}"
        return self.ids[key]

    def rows(self) -> Iterator[dict]:
        for (title, text), passage_id in self.ids.items():
            yield {"id": passage_id, "contents": f'"{title}"\n{text}'}


def convert(rows: Iterator[tuple[int, object]], fmt: str, source: str, id_prefix: str = "p"
            ) -> tuple[list[dict], list[dict], ConversionStats]:
    """(corpus rows, question rows, stats) from parsed input rows."""
    pool = PassagePool(id_prefix)
    questions, stats, seen_ids = [], ConversionStats(), set()
    for number, row in tqdm(rows, desc="convert", unit="row"):
        where = f"{source}: row {number}"
        if fmt == "hotpotqa":
            example, missing = parse_hotpotqa(row, where)
        else:
            example, missing = parse_musique(row, where), 0
            if row.get("answerable") is False:
                stats.skip("unanswerable")
                continue
        if not example.paragraphs:
            stats.skip("no paragraphs")
            continue
        if example.id in seen_ids:
            raise MalformedRow(f"{where}: question id {example.id} appears twice")
        seen_ids.add(example.id)
        stats.supporting_titles_missing += missing
        passage_ids = [pool.add(p) for p in example.paragraphs]
        supporting = [pid for pid, p in zip(passage_ids, example.paragraphs) if p.supporting]
        questions.append({"id": example.id, "question": example.question, "golden_answers": example.answers,
                          "supporting_ids": list(dict.fromkeys(supporting))})
    corpus = list(pool.rows())
    stats.questions, stats.passages = len(questions), len(corpus)
    return corpus, questions, stats


def split_test(questions: list[dict], test_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test), each in input order; test = the round(share*n) smallest (seed, id) hashes."""
    def rank(question: dict) -> str:
        return hashlib.sha256(f"{seed}:{question['id']}".encode()).hexdigest()

    test_ids = {q["id"] for q in sorted(questions, key=rank)[:round(test_share * len(questions))]}
    return [q for q in questions if q["id"] not in test_ids], [q for q in questions if q["id"] in test_ids]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=["hotpotqa", "musique"], required=True,
                        help="hotpotqa (also 2WikiMultiHopQA) or musique layout")
    parser.add_argument("--input", type=Path, required=True, help="JSON list or JSONL file")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument("--test-share", type=float, default=None,
                        help="share of questions held out in test.jsonl (e.g. 0.2); "
                             "default: all questions in questions.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default 0)")
    parser.add_argument("--id-prefix", default="p", help="prefix of passage ids (default 'p': p0, p1, ...)")
    args = parser.parse_args(argv)
    if args.test_share is not None and not 0 < args.test_share < 1:
        parser.error(f"--test-share must be between 0 and 1, got {args.test_share}")

    corpus, questions, stats = convert(read_rows(args.input), args.format, str(args.input), args.id_prefix)
    if not questions:
        raise SystemExit(f"{args.input}: no question with paragraphs (skipped: {stats.skipped})")
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "corpus.jsonl", corpus)
    if args.test_share is None:
        write_jsonl(args.out / "questions.jsonl", questions)
        parts = f"{len(questions)} questions"
    else:
        train, test = split_test(questions, args.test_share, args.seed)
        write_jsonl(args.out / "train.jsonl", train)
        write_jsonl(args.out / "test.jsonl", test)
        parts = f"{len(train)} train + {len(test)} test questions"
    skipped = ", ".join(f"{count} {reason}" for reason, count in stats.skipped.items()) or "none"
    print(f"{args.out}: {stats.passages} passages, {parts}; skipped rows: {skipped}")
    if stats.supporting_titles_missing:
        print(f"warning: {stats.supporting_titles_missing} supporting-fact titles were not among "
              f"their question's paragraphs (those supports are absent from supporting_ids)")


if __name__ == "__main__":
    main()
