import json

import pytest

from rag_r1.eval.report import read_jsonl
from scripts.build_corpus import split_kilt_to_100
from scripts.build_corpus.split_kilt_to_100 import article_words, split_kilt

ARTICLES = [
    {"wikipedia_id": "1", "wikipedia_title": "Alpha",
     "text": ["Alpha\n", "Alpha is a letter of the Greek alphabet.\n", "Section::::History.\n",
              "It came from Phoenician aleph.\n"]},
    {"wikipedia_id": "2", "wikipedia_title": "Empty page", "text": ["Empty page\n", "Section::::Only heading.\n"]},
    {"wikipedia_id": "3", "wikipedia_title": "Lists",
     "text": ["Lists\n", "Items:\n", "BULLET::::- first item\n", "BULLET::::- second\n"]},
]

# 4 words a passage: Alpha's 13 body words give 4 passages, "Empty page" none, Lists one.
EXPECTED = [
    {"id": "0", "contents": '"Alpha"\nAlpha is a letter'},
    {"id": "1", "contents": '"Alpha"\nof the Greek alphabet.'},
    {"id": "2", "contents": '"Alpha"\nIt came from Phoenician'},
    {"id": "3", "contents": '"Alpha"\naleph.'},
    {"id": "4", "contents": '"Lists"\nItems: first item second'},
]


@pytest.fixture
def kilt_file(tmp_path):
    path = tmp_path / "kilt.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in ARTICLES) + "\n")
    return path


def test_article_words_drops_title_headings_and_bullet_markers():
    assert article_words(ARTICLES[2]["text"]) == ["Items:", "first", "item", "second"]
    assert article_words(ARTICLES[1]["text"]) == []


def test_split_gives_exact_passages_with_sequential_ids(kilt_file, tmp_path):
    out = tmp_path / "passages.jsonl"
    assert split_kilt(kilt_file, out, words_per_passage=4) == 5
    assert read_jsonl(out) == EXPECTED
    assert not (tmp_path / "passages.jsonl.partial").exists()
    assert not (tmp_path / "passages.jsonl.checkpoint.json").exists()


def test_default_100_words_cuts_150_words_into_100_and_50(tmp_path):
    words = [f"w{i}" for i in range(150)]
    path = tmp_path / "kilt.jsonl"
    path.write_text(json.dumps({"wikipedia_title": "Long", "text": ["Long\n", " ".join(words) + "\n"]}) + "\n")
    out = tmp_path / "passages.jsonl"
    assert split_kilt(path, out) == 2
    rows = read_jsonl(out)
    assert rows[0]["contents"] == '"Long"\n' + " ".join(words[:100])
    assert rows[1]["contents"] == '"Long"\n' + " ".join(words[100:])


def test_rerun_on_finished_output_leaves_it_alone(kilt_file, tmp_path):
    out = tmp_path / "passages.jsonl"
    split_kilt(kilt_file, out, words_per_passage=4)
    out.write_text(out.read_text() + "marker\n")
    assert split_kilt(kilt_file, out, words_per_passage=4) == 6
    assert out.read_text().endswith("marker\n")
    assert split_kilt(kilt_file, out, words_per_passage=4, overwrite=True) == 5
    assert read_jsonl(out) == EXPECTED


def test_killed_run_resumes_from_checkpoint(kilt_file, tmp_path, monkeypatch):
    out = tmp_path / "passages.jsonl"
    real_parse = split_kilt_to_100.parse_article

    def crash_on_third_article(line, line_number, path):
        if line_number == 3:
            raise KeyboardInterrupt
        return real_parse(line, line_number, path)

    monkeypatch.setattr(split_kilt_to_100, "parse_article", crash_on_third_article)
    with pytest.raises(KeyboardInterrupt):
        split_kilt(kilt_file, out, words_per_passage=4, checkpoint_every=1)
    monkeypatch.undo()
    partial = tmp_path / "passages.jsonl.partial"
    assert read_jsonl(partial) == EXPECTED[:4]
    # Rows written after the last checkpoint (a crash mid-article) must not survive the resume.
    with open(partial, "a") as f:
        f.write('{"id": "4", "contents": "half written')
    with pytest.raises(ValueError, match="made with words_per_passage=4, this run has 5"):
        split_kilt(kilt_file, out, words_per_passage=5, checkpoint_every=1)
    assert split_kilt(kilt_file, out, words_per_passage=4, checkpoint_every=1) == 5
    assert read_jsonl(out) == EXPECTED


def test_malformed_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "kilt.jsonl"
    path.write_text(json.dumps(ARTICLES[0]) + "\n" + '{"wikipedia_title": "No text"}\n')
    with pytest.raises(ValueError, match=r"kilt.jsonl: line 2 is not a KILT article"):
        split_kilt(path, tmp_path / "out.jsonl")


def test_cli_on_the_real_kilt_sample(shared_data, tmp_path, capsys):
    out = tmp_path / "kilt_100w.jsonl"
    split_kilt_to_100.main(["--input", str(shared_data / "kilt_sample" / "kilt_knowledgesource.jsonl"),
                            "--out", str(out)])
    assert capsys.readouterr().out.strip() == f"31332 passages in {out}"
    rows = read_jsonl(out)
    assert [r["id"] for r in rows[:3]] == ["0", "1", "2"] and rows[-1]["id"] == "31331"
    assert rows[0]["contents"].startswith('"Jarred Shaw"\nJarred Shaw (born September 28, 1990)')
    assert max(len(r["contents"].split("\n", 1)[1].split()) for r in rows) == 100
    assert not any("Section::::" in r["contents"] for r in rows)
