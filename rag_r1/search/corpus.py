"""Passage corpora: stream them, index them by row, and split their titles off.

A passage is `{"id": str, "contents": "\"Title\"\ntext"}` (the Search-R1 / FlashRAG form). Two file
layouts are read, chosen by extension:

- `.jsonl` / `.json`: one JSON object a line with `id` and `contents`;
- `.tsv`: the seed release's `id<TAB>contents` (an optional header row whose first field is `id`),
  or DPR's `id<TAB>text<TAB>title` when the header names a `title` column.

`load_corpus` keeps only one byte offset per row and reads a row when it is asked for, so a 29M-row
corpus costs a few hundred MB of offsets and ids instead of tens of GB of Python dicts.
"""
from __future__ import annotations

import json
import mmap
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

JSONL_SUFFIXES = (".jsonl", ".json")
TSV_SUFFIXES = (".tsv",)


def corpus_format(path: str | Path) -> str:
    """'jsonl' or 'tsv' from the file name; anything else is an error naming the file."""
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in TSV_SUFFIXES:
        return "tsv"
    raise ValueError(
        f"corpus file {path}: unknown extension {suffix!r}; expected one of "
        f"{', '.join(JSONL_SUFFIXES + TSV_SUFFIXES)}"
    )


def split_title(contents: str) -> tuple[str, str]:
    """`'"Title"\\ntext'` -> `("Title", "text")`; contents without a title line give `("", contents)`."""
    head, sep, text = contents.partition("\n")
    if not sep:
        return "", contents
    title = head.strip()
    if len(title) >= 2 and title[0] == '"' and title[-1] == '"':
        title = title[1:-1]
    return title, text


def _tsv_header(line: str) -> list[str] | None:
    fields = line.rstrip("\r\n").split("\t")
    return [f.strip().lower() for f in fields] if fields[0].strip().lower() == "id" else None


def _tsv_row(line: str, columns: list[str] | None, where: str) -> dict:
    fields = line.rstrip("\r\n").split("\t")
    if columns is not None and "title" in columns and len(fields) == len(columns):
        row = dict(zip(columns, fields, strict=True))
        return {"id": row["id"], "contents": f'"{row["title"]}"\n{row["text"]}'}
    if len(fields) < 2:
        raise ValueError(f"{where}: expected 'id<TAB>contents', got {line[:80]!r}")
    # A tab inside the contents is text, not a column break.
    return {"id": fields[0], "contents": "\t".join(fields[1:])}


def _jsonl_row(line: str, where: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg})") from err
    if "id" not in obj or "contents" not in obj:
        raise ValueError(f"{where}: a passage needs 'id' and 'contents', got keys {sorted(obj)}")
    return {"id": str(obj["id"]), "contents": obj["contents"]}


def iter_passages(path: str | Path) -> Iterator[dict]:
    """Yield `{"id": str, "contents": str}` for every passage of a JSONL or TSV corpus, in file order."""
    path = Path(path)
    fmt = corpus_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    with path.open("r", encoding="utf-8") as f:
        columns = None
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if fmt == "jsonl":
                yield _jsonl_row(line, f"{path}:{line_no}")
                continue
            if line_no == 1:
                columns = _tsv_header(line)
                if columns is not None:
                    continue
            yield _tsv_row(line, columns, f"{path}:{line_no}")


def count_passages(path: str | Path) -> int:
    """Number of passages (non-blank lines, minus a TSV header), without parsing them."""
    return len(_scan_offsets(Path(path), show_progress=False)[0])


SCAN_CHUNK_BYTES = 1 << 26
# Lines this short are checked for being blank; a passage line is always longer.
SHORT_LINE_BYTES = 8


def _scan_offsets(path: Path, show_progress: bool) -> tuple[np.ndarray, list[str] | None]:
    """Byte offsets of every passage line, and the TSV header columns if there is one.

    Newlines are found with numpy over 64 MB chunks, so a 20 GB corpus scans at disk speed.
    """
    fmt = corpus_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        return np.zeros(0, dtype=np.int64), None
    newline_ends = []
    with path.open("rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"scan {path.name}",
                                    disable=not show_progress) as bar:
        base = 0
        while chunk := f.read(SCAN_CHUNK_BYTES):
            newline_ends.append(np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + base + 1)
            base += len(chunk)
            bar.update(len(chunk))
    ends = np.concatenate(newline_ends)
    if len(ends) == 0 or ends[-1] != size:  # last line without a trailing newline
        ends = np.append(ends, size)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    keep = np.ones(len(starts), dtype=bool)
    columns = None
    with path.open("rb") as f:
        for i in np.flatnonzero(ends - starts <= SHORT_LINE_BYTES):
            f.seek(starts[i])
            keep[i] = bool(f.read(int(ends[i] - starts[i])).strip())
        if fmt == "tsv":
            f.seek(0)
            columns = _tsv_header(f.readline().decode("utf-8"))
            keep[0] = keep[0] and columns is None
    return starts[keep], columns


class _IdView(Sequence):
    """Read-only list of passage ids backed by a compact bytes array."""

    def __init__(self, ids: np.ndarray):
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [x.decode("utf-8") for x in self._ids[i]]
        return self._ids[i].decode("utf-8")


class Corpus:
    """Random access to a corpus file by row: `len(c)`, `c[i] -> {"id", "contents"}`, `c.ids`.

    The file is memory-mapped; only one int64 offset per row lives in RAM (plus the ids once asked for).
    """

    def __init__(self, path: str | Path, show_progress: bool = True):
        self.path = Path(path)
        self.format = corpus_format(self.path)
        self._offsets, self._columns = _scan_offsets(self.path, show_progress)
        self._file = self.path.open("rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if len(self._offsets) else None
        self._show_progress = show_progress
        self._ids: np.ndarray | None = None

    def _read(self, i: int) -> dict:
        start = int(self._offsets[i])
        end = self._map.find(b"\n", start)
        line = self._map[start:] if end < 0 else self._map[start:end]
        text = line.decode("utf-8")
        where = f"{self.path} row {i}"
        if self.format == "jsonl":
            return _jsonl_row(text, where)
        return _tsv_row(text, self._columns, where)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for a corpus of {len(self)} passages ({self.path})")
        return self._read(i)

    def __iter__(self) -> Iterator[dict]:
        return (self._read(i) for i in range(len(self)))

    @property
    def ids(self) -> Sequence[str]:
        """All passage ids in row order; parsed on first use (the server never needs them)."""
        if self._ids is None:
            rows = tqdm(range(len(self)), desc="read ids", disable=not self._show_progress)
            self._ids = np.array([self._read(i)["id"].encode("utf-8") for i in rows], dtype=np.bytes_)
        return _IdView(self._ids)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()


def load_corpus(path: str | Path, show_progress: bool = True) -> Corpus:
    """Open a JSONL or TSV corpus for random access by row (see `Corpus`)."""
    return Corpus(path, show_progress=show_progress)
