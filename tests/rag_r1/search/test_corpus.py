"""Corpus reading: JSONL and the seed's TSV, row access by byte offset, titles."""
from __future__ import annotations

import json

import pytest
from search_testdata import PASSAGES, passage_contents, write_jsonl

from rag_r1.search.corpus import count_passages, iter_passages, load_corpus, split_title

EXPECTED = [{"id": pid, "contents": passage_contents(title, text)} for pid, title, text in PASSAGES]


def write_tsv(path, header: str | None, rows: list[str]):
    path.write_text("".join(f"{line}\n" for line in ([header] if header else []) + rows), encoding="utf-8")
    return path


def test_iter_and_load_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl")
    assert list(iter_passages(path)) == EXPECTED
    corpus = load_corpus(path, show_progress=False)
    assert len(corpus) == len(PASSAGES) == count_passages(path)
    assert corpus[3] == EXPECTED[3]
    assert corpus[-1] == EXPECTED[-1]
    assert list(corpus.ids) == [p[0] for p in PASSAGES]
    assert corpus.ids[2:4] == ["p2", "p3"]
    assert list(corpus) == EXPECTED


def test_rows_with_unicode_and_blank_lines_keep_their_offsets(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"id": "1", "contents": '"Zoë"\nKöln – 東京'}, {"id": 2, "contents": '"B"\nb'}]
    path.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n\n" + json.dumps(rows[1]) + "\n")
    corpus = load_corpus(path, show_progress=False)
    assert len(corpus) == 2
    assert corpus[0] == rows[0]
    assert corpus[1] == {"id": "2", "contents": '"B"\nb'}  # ids are always strings


def test_tsv_with_and_without_header(tmp_path):
    # the seed's TSV cannot hold a newline, so its contents are the title and text on one line
    rows = ["7\tThe \"Title\" text\twith a tab", "8\tplain"]
    expected = [{"id": "7", "contents": 'The "Title" text\twith a tab'}, {"id": "8", "contents": "plain"}]
    for header in (None, "id\tcontents"):
        path = write_tsv(tmp_path / f"c{header is None}.tsv", header, rows)
        assert list(iter_passages(path)) == expected
        corpus = load_corpus(path, show_progress=False)
        assert len(corpus) == 2 == count_passages(path)
        assert corpus[1] == expected[1]
        assert list(corpus.ids) == ["7", "8"]


def test_dpr_tsv_with_a_title_column_builds_title_contents(tmp_path):
    path = write_tsv(tmp_path / "psgs_w100.tsv", "id\ttext\ttitle", ["1\tAaron is a prophet.\tAaron"])
    assert list(iter_passages(path)) == [{"id": "1", "contents": '"Aaron"\nAaron is a prophet.'}]
    assert load_corpus(path, show_progress=False)[0] == {"id": "1", "contents": '"Aaron"\nAaron is a prophet.'}


def test_unknown_extension_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown extension '\.csv'.*\.jsonl, \.json, \.tsv"):
        list(iter_passages(tmp_path / "c.csv"))
    with pytest.raises(FileNotFoundError, match="corpus file not found: .*missing.jsonl"):
        load_corpus(tmp_path / "missing.jsonl")


def test_bad_rows_name_the_file_and_line(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"id": "1", "contents": "a"}\n{"id": "2", "contents": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        list(iter_passages(bad_json))
    no_contents = tmp_path / "keys.jsonl"
    no_contents.write_text('{"id": "1", "text": "a"}\n')
    with pytest.raises(ValueError, match=r"keys.jsonl:1: a passage needs 'id' and 'contents'"):
        list(iter_passages(no_contents))
    one_column = write_tsv(tmp_path / "one.tsv", None, ["lonely"])
    with pytest.raises(ValueError, match=r"one.tsv:1: expected 'id<TAB>contents'"):
        list(iter_passages(one_column))


def test_row_out_of_range(tmp_path):
    corpus = load_corpus(write_jsonl(tmp_path / "c.jsonl"), show_progress=False)
    with pytest.raises(IndexError, match="row 8 out of range for a corpus of 8 passages"):
        corpus[8]


@pytest.mark.parametrize("contents,title,text", [
    ('"Evan Morris"\nEvan L. Morris was a lobbyist.', "Evan Morris", "Evan L. Morris was a lobbyist."),
    ('"A "quoted" title"\nline one\nline two', 'A "quoted" title', "line one\nline two"),
    ("Unquoted\ntext", "Unquoted", "text"),
    ("no title line at all", "", "no title line at all"),
])
def test_split_title(contents, title, text):
    assert split_title(contents) == (title, text)


def test_real_wiki18_sample(shared_data):
    path = shared_data / "wiki18_1k" / "corpus.jsonl"
    corpus = load_corpus(path, show_progress=False)
    assert len(corpus) == 1000 == count_passages(path)
    assert corpus.ids[0] == "0" and corpus.ids[999] == "999"
    title, text = split_title(corpus[0]["contents"])
    assert title == "Evan Morris"
    assert text.startswith("Evan Morris Evan L. Morris (January 26, 1977")
    assert list(iter_passages(path))[500] == corpus[500]


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1 << 26])
def test_offsets_agree_with_streaming_across_chunk_boundaries(tmp_path, monkeypatch, chunk_bytes):
    monkeypatch.setattr("rag_r1.search.corpus.SCAN_CHUNK_BYTES", chunk_bytes)
    lines = [json.dumps(p) for p in EXPECTED]
    # CRLF endings, blank and whitespace-only lines, no newline after the last row
    path = tmp_path / "messy.jsonl"
    path.write_bytes(("\r\n".join(lines[:3]) + "\r\n\r\n  \n" + "\n".join(lines[3:])).encode())
    corpus = load_corpus(path, show_progress=False)
    assert list(corpus) == list(iter_passages(path)) == EXPECTED
    assert count_passages(path) == len(EXPECTED)


def test_empty_file_is_an_empty_corpus(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert len(load_corpus(path, show_progress=False)) == 0 == count_passages(path)


def test_a_bad_row_read_by_index_names_the_row(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "1", "contents": "a"}\n{"id": "2"}\n')
    corpus = load_corpus(path, show_progress=False)
    with pytest.raises(ValueError, match=r"c.jsonl row 1: a passage needs 'id' and 'contents'"):
        corpus[1]
