"""Split KILT's knowledge source into 100-word passages (the corpus format of the retrieval stack).

    python -m scripts.build_corpus.split_kilt_to_100 --input kilt_knowledgesource.json \
        --out .cache/corpus/kilt_100w.jsonl [--words 100]

Input: one JSON article a line, `{"wikipedia_id", "wikipedia_title", "text": [title, paragraph, ...]}`
(KILT's `kilt_knowledgesource.json`, 5.9M articles). Output: JSONL
`{"id": str, "contents": "\"Title\"\npassage text"}`.

How an article becomes passages (as DPR built wiki-18 and the seed built its KILT corpus):
- `text[0]` repeats the title and is dropped (the title is already the passage header);
- `Section::::Heading.` lines are dropped; `BULLET::::- item` lines keep only the item text;
- the remaining words of the article, in order, are cut into consecutive windows of `--words`
  whitespace-separated words; the last window of an article may be shorter; passages never span
  two articles, and articles without body text give no passage.
- ids are sequential integers "0", "1", ... in input order, so the same input always gives the same
  ids, and row i of the corpus is row i of its embedding and index.

Memory stays constant: one article at a time. A run writes `OUT.partial` and, every
`--checkpoint-every` articles, a checkpoint (input byte offset, next id, output bytes); a killed
run started again with the same arguments continues from the last checkpoint, and the finished
file is renamed to OUT only at the end. Re-running on a finished OUT does nothing unless
`--overwrite`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

SECTION_MARKER = "Section::::"
BULLET_MARKER = "BULLET::::"


def article_words(text: list[str]) -> list[str]:
    """The body words of one KILT article: title line, headings and bullet markers removed."""
    words: list[str] = []
    for paragraph in text[1:]:
        paragraph = paragraph.strip()
        if paragraph.startswith(SECTION_MARKER):
            continue
        if paragraph.startswith(BULLET_MARKER):
            # KILT writes list items as "BULLET::::- item"; the dash is markup, not text.
            paragraph = paragraph[len(BULLET_MARKER):].lstrip("-").strip()
        words.extend(paragraph.split())
    return words


def article_passages(title: str, text: list[str], words_per_passage: int) -> Iterator[str]:
    """The `contents` strings of one article's passages, in order."""
    words = article_words(text)
    header = f'"{title}"\n'
    for start in range(0, len(words), words_per_passage):
        yield header + " ".join(words[start:start + words_per_passage])


def parse_article(line: bytes, line_number: int, path: Path) -> tuple[str, list[str]]:
    try:
        article = json.loads(line)
        title, text = article["wikipedia_title"], article["text"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: line {line_number} is not a KILT article ({error!r})") from None
    if not isinstance(text, list):
        raise ValueError(f"{path}: line {line_number}: 'text' must be a list of paragraphs")
    return title, text


def _load_checkpoint(checkpoint_path: Path, partial_path: Path, run: dict) -> dict:
    fresh = {**run, "input_offset": 0, "line_number": 0, "next_id": 0, "output_bytes": 0}
    if not (checkpoint_path.exists() and partial_path.exists()):
        return fresh
    state = json.loads(checkpoint_path.read_text())
    for key, value in run.items():
        if state.get(key) != value:
            raise ValueError(f"{checkpoint_path} was made with {key}={state.get(key)!r}, this run has "
                             f"{value!r}: pass --overwrite to start again")
    # Passages written after the last checkpoint would be written again: cut them off.
    with open(partial_path, "r+b") as partial:
        partial.truncate(state["output_bytes"])
    return state


def _save_checkpoint(checkpoint_path: Path, state: dict) -> None:
    tmp = checkpoint_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, checkpoint_path)


def split_kilt(input_path: Path, out_path: Path, words_per_passage: int = 100,
               checkpoint_every: int = 10_000, overwrite: bool = False) -> int:
    """Write the passage corpus to `out_path`; return the number of passages in it."""
    input_path, out_path = Path(input_path), Path(out_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"KILT knowledge source not found: {input_path}")
    partial_path = out_path.with_name(out_path.name + ".partial")
    checkpoint_path = out_path.with_name(out_path.name + ".checkpoint.json")
    if out_path.exists() and not overwrite:
        print(f"{out_path} already exists; pass --overwrite to rebuild it", file=sys.stderr)
        return sum(1 for _ in open(out_path, "rb"))
    if overwrite:
        partial_path.unlink(missing_ok=True)
        checkpoint_path.unlink(missing_ok=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    run = {"input": str(input_path.resolve()), "input_bytes": input_path.stat().st_size,
           "words_per_passage": words_per_passage}
    state = _load_checkpoint(checkpoint_path, partial_path, run)
    if state["line_number"]:
        print(f"resuming after article {state['line_number']} (next id {state['next_id']})", file=sys.stderr)

    with open(input_path, "rb") as source, open(partial_path, "ab") as sink, \
            tqdm(total=run["input_bytes"], initial=state["input_offset"], unit="B", unit_scale=True,
                 desc="split") as progress:
        source.seek(state["input_offset"])
        for line in source:
            state["line_number"] += 1
            progress.update(len(line))
            state["input_offset"] += len(line)
            if not line.strip():
                continue
            title, text = parse_article(line, state["line_number"], input_path)
            for contents in article_passages(title, text, words_per_passage):
                row = {"id": str(state["next_id"]), "contents": contents}
                sink.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
                state["next_id"] += 1
            if state["line_number"] % checkpoint_every == 0:
                sink.flush()
                os.fsync(sink.fileno())
                state["output_bytes"] = sink.tell()
                _save_checkpoint(checkpoint_path, state)
    os.replace(partial_path, out_path)
    checkpoint_path.unlink(missing_ok=True)
    return state["next_id"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True,
                        help="KILT knowledge source: one JSON article a line")
    parser.add_argument("--out", type=Path, required=True, help="output passages JSONL")
    parser.add_argument("--words", type=int, default=100, help="words per passage (default 100)")
    parser.add_argument("--checkpoint-every", type=int, default=10_000,
                        help="articles between resume checkpoints (default 10000)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild OUT even if it exists")
    args = parser.parse_args(argv)
    if args.words < 1:
        parser.error("--words must be at least 1")
    count = split_kilt(args.input, args.out, args.words, args.checkpoint_every, args.overwrite)
    print(f"{count} passages in {args.out}")


if __name__ == "__main__":
    main()
