import json

import numpy as np
import pytest

from scripts.build_corpus import build_corpus_embedding
from scripts.build_corpus.build_corpus_embedding import build_embeddings, prepare_meta
from scripts.build_corpus.embedding_store import (
    chunk_path, load_all, load_embedded_prefix, read_meta, shard_bounds, shard_path,
)

PASSAGES = [
    '"Paris"\nParis is the capital of France.',
    '"Tokyo"\nTokyo is the capital of Japan.',
    '"Photosynthesis"\nPlants turn light into chemical energy.',
    '"Jazz"\nJazz began in New Orleans.',
    '"Everest"\nMount Everest is the highest mountain.',
]


@pytest.fixture
def tsv_corpus(tmp_path):
    # The seed release's form: id<TAB>contents on one line, so the title is joined by a space.
    path = tmp_path / "corpus.tsv"
    path.write_text("".join(f"{i}\t{p.replace(chr(10), ' ')}\n" for i, p in enumerate(PASSAGES)))
    return path


def test_shard_bounds_cover_every_row_once():
    bounds = [shard_bounds(10, 3, i) for i in range(3)]
    assert bounds == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError, match="shard id 3 is outside 0..2"):
        shard_bounds(10, 3, 3)


def test_meta_of_another_run_is_refused(tmp_path):
    meta = {"num_passages": 5, "num_shards": 2, "chunk_size": 2, "model": "a",
            "passage_instruction": "", "max_length": 256}
    prepare_meta(tmp_path, meta)
    assert prepare_meta(tmp_path, dict(meta)) == meta
    with pytest.raises(ValueError, match="has model='a' but this run uses 'b'"):
        prepare_meta(tmp_path, {**meta, "model": "b"})


@pytest.mark.slow
def test_tsv_corpus_embeds_into_resumable_float16_shards(tsv_corpus, tmp_path, minilm_path):
    from rag_r1.search.encoder import Encoder

    out = tmp_path / "emb"
    encoder = Encoder(str(minilm_path))
    # Shard 0 alone first, as one process of a multi-process run would.
    build_embeddings(tsv_corpus, out, model=str(minilm_path), num_shards=2, shard_ids=[0],
                     chunk_size=2, show_progress=False, encoder=encoder)
    assert shard_path(out, 0).is_file() and not shard_path(out, 1).exists()
    assert read_meta(out)["num_passages"] == 5 and read_meta(out)["dim"] == 384
    assert len(load_embedded_prefix(out)) == 2

    # A killed run of shard 1 (rows 2..4) left its first chunk (2 rows): the resume keeps it.
    sentinel = np.full((2, 384), 0.5, dtype=np.float16)
    chunk_path(out, 1, 0).parent.mkdir()
    np.save(chunk_path(out, 1, 0), sentinel)
    assert len(load_embedded_prefix(out)) == 4
    build_corpus_embedding.main(["--corpus", str(tsv_corpus), "--out", str(out), "--model", str(minilm_path),
                                 "--num-shards", "2", "--chunk-size", "2", "--device", "cpu"])
    assert not chunk_path(out, 1, 0).parent.exists()

    shard1 = np.load(shard_path(out, 1))
    assert shard1.dtype == np.float16 and shard1.shape == (3, 384)
    np.testing.assert_array_equal(shard1[:2], sentinel)

    vectors = load_all(out)
    expected = encoder.encode_passages([p.replace("\n", " ") for p in PASSAGES])
    rows = [0, 1, 4]  # the rows not replaced by the sentinel chunk
    np.testing.assert_allclose(vectors[rows], expected[rows], atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(vectors[rows], axis=1), 1.0, atol=2e-3)
    # The question about Japan's capital is nearest to the Tokyo passage.
    query = encoder.encode_queries(["What is the capital of Japan?"])[0]
    assert int(np.argmax(vectors[rows] @ query)) == 1
    assert json.loads((out / "meta.json").read_text())["query_instruction"] == ""
