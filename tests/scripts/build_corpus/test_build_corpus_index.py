import faiss
import numpy as np
import pytest

from scripts.build_corpus import build_corpus_index
from scripts.build_corpus.build_corpus_index import (
    build_index, exact_search, merge_index_files, recall_against_exact,
)
from scripts.build_corpus.embedding_store import shard_bounds, shard_path, write_meta

DIM = 32
ROWS = 1200


def unit_vectors(rows, seed):
    x = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_embeddings(directory, vectors, num_shards):
    """An embedding directory as build_corpus_embedding writes it (float16 shards + meta.json)."""
    directory.mkdir()
    write_meta(directory, {"num_passages": len(vectors), "num_shards": num_shards, "dim": DIM})
    for shard_id in range(num_shards):
        start, end = shard_bounds(len(vectors), num_shards, shard_id)
        np.save(shard_path(directory, shard_id), vectors[start:end].astype(np.float16))
    return directory


@pytest.fixture(scope="module")
def corpus_vectors():
    # Stored as float16, so compare against what the index actually sees.
    return unit_vectors(ROWS, seed=0).astype(np.float16).astype(np.float32)


@pytest.fixture(autouse=True)
def single_thread():
    # HNSW insertion across threads is not deterministic; one thread makes builds comparable (and
    # keeps FAISS's OpenMP from spinning on a shared, busy CPU).
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.mark.parametrize("factory", ["Flat", "IVF8,SQ8", "IVF8,PQ8", "HNSW32", "HNSW16,SQ8"])
def test_three_shards_merged_equal_one_build(factory, corpus_vectors, tmp_path):
    one = write_embeddings(tmp_path / "one", corpus_vectors, num_shards=1)
    three = write_embeddings(tmp_path / "three", corpus_vectors, num_shards=3)
    single = build_index(one, tmp_path / "one.index", factory, train_size=1000, show_progress=False)
    merged = build_index(three, tmp_path / "three.index", factory, train_size=1000, show_progress=False)
    assert single.ntotal == merged.ntotal == ROWS

    queries = unit_vectors(50, seed=1)
    single_scores, single_ids = single.search(queries, 10)
    merged_scores, merged_ids = merged.search(queries, 10)
    np.testing.assert_array_equal(merged_ids, single_ids)
    np.testing.assert_allclose(merged_scores, single_scores, rtol=1e-6)
    # Ids are corpus rows: the written file answers like the index in memory.
    reloaded = faiss.read_index(str(tmp_path / "three.index"))
    np.testing.assert_array_equal(reloaded.search(queries, 10)[1], single_ids)


def test_flat_index_finds_exact_neighbours_by_corpus_row(corpus_vectors, tmp_path):
    three = write_embeddings(tmp_path / "three", corpus_vectors, num_shards=3)
    index = build_index(three, tmp_path / "flat.index", show_progress=False)
    assert not (tmp_path / "flat.index.shards").exists()
    scores, ids = index.search(corpus_vectors[[5, 700, 1199]], 1)
    np.testing.assert_array_equal(ids[:, 0], [5, 700, 1199])
    # float16 storage leaves norms within ~1e-4 of 1: the top score is each vector's own norm².
    np.testing.assert_allclose(scores[:, 0], (corpus_vectors[[5, 700, 1199]] ** 2).sum(axis=1), rtol=1e-5)


def test_exact_search_streams_shards_like_a_flat_index(corpus_vectors, tmp_path):
    three = write_embeddings(tmp_path / "three", corpus_vectors, num_shards=3)
    queries = unit_vectors(20, seed=2)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(corpus_vectors)
    np.testing.assert_array_equal(exact_search(three, queries, 7), flat.search(queries, 7)[1])


def test_merge_of_existing_chunk_files_matches_build(corpus_vectors, tmp_path):
    three = write_embeddings(tmp_path / "three", corpus_vectors, num_shards=3)
    built = build_index(three, tmp_path / "ivf.index", "IVF8,Flat", train_size=1000, nprobe=64,
                        keep_shard_indexes=True, show_progress=False)
    chunks = sorted((tmp_path / "ivf.index.shards").glob("shard_*.index"))
    assert [c.name for c in chunks] == ["shard_00.index", "shard_01.index", "shard_02.index"]
    build_corpus_index.main(["--shard-indexes", *map(str, chunks), "--out", str(tmp_path / "m.index"),
                             "--nprobe", "64"])
    merged = faiss.read_index(str(tmp_path / "m.index"))
    queries = unit_vectors(30, seed=3)
    np.testing.assert_array_equal(merged.search(queries, 5)[1], built.search(queries, 5)[1])


def test_hnsw_chunks_merge_by_re_adding_vectors(corpus_vectors, tmp_path):
    paths = []
    for start, end in [(0, 400), (400, 1200)]:
        shard = faiss.index_factory(DIM, "HNSW16", faiss.METRIC_INNER_PRODUCT)
        shard.add(corpus_vectors[start:end])
        paths.append(tmp_path / f"{start}.index")
        faiss.write_index(shard, str(paths[-1]))
    merged = merge_index_files(paths)
    assert merged.ntotal == 1200
    np.testing.assert_array_equal(merged.reconstruct_n(0, 1200), corpus_vectors)


def test_recall_against_exact_counts_top1_and_overlap():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[1, 3, 9], [5, 4, 6]])
    # query 0: same top hit, overlap {1,3}=2/3; query 1: other top hit, overlap 3/3
    assert recall_against_exact(approx, exact, 3) == {"recall@1": 0.5, "recall@3": pytest.approx(5 / 6)}


def test_cli_prints_size_and_recall_for_approximate_index(corpus_vectors, tmp_path, capsys):
    three = write_embeddings(tmp_path / "three", corpus_vectors, num_shards=3)
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("".join(f"{i}\tpassage {i}\n" for i in range(ROWS)))
    build_corpus_index.main(["--embeddings", str(three), "--out", str(tmp_path / "sq.index"),
                             "--factory", "SQ8", "--corpus", str(corpus), "--recall-queries", "100"])
    lines = capsys.readouterr().out.strip().splitlines()
    # SQ8 keeps one byte per dimension: 32 bytes a vector plus a small header.
    assert lines[0].startswith(f"{tmp_path / 'sq.index'}: 1200 vectors, 0.0 MiB (32 bytes/vector)")
    recall1 = float(lines[1].split("recall@1 ")[1].split(",")[0])
    assert lines[1].startswith("recall vs exact flat on 100 corpus-vector queries:") and recall1 >= 0.95


def test_corpus_of_another_size_is_rejected(corpus_vectors, tmp_path):
    three = write_embeddings(tmp_path / "three", corpus_vectors, num_shards=3)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "0", "contents": "\\"T\\"\\nx"}\n')
    with pytest.raises(SystemExit, match="corpus.jsonl has 1 passages but the index"):
        build_corpus_index.main(["--embeddings", str(three), "--out", str(tmp_path / "f.index"),
                                 "--corpus", str(corpus)])


def test_unknown_factory_string_is_a_clear_error(corpus_vectors, tmp_path):
    three = write_embeddings(tmp_path / "three", corpus_vectors, num_shards=3)
    with pytest.raises(ValueError, match="FAISS cannot build factory string 'Bogus12'"):
        build_index(three, tmp_path / "x.index", "Bogus12", show_progress=False)


def test_rerank_vectors_file_holds_the_embeddings_and_restores_exact_recall(corpus_vectors, tmp_path, capsys):
    three = write_embeddings(tmp_path / "three", corpus_vectors, num_shards=3)
    vectors_path = tmp_path / "full.npy"
    build_corpus_index.main(["--embeddings", str(three), "--out", str(tmp_path / "pq.index"), "--factory", "PQ4x4",
                             "--rerank-vectors", str(vectors_path), "--rerank-depth", str(ROWS),
                             "--recall-queries", "50"])
    full = np.load(vectors_path)
    assert full.dtype == np.float16
    np.testing.assert_array_equal(full, corpus_vectors.astype(np.float16))  # all shards, in corpus order
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1] == f"full vectors for re-ranking: {vectors_path}"
    plain, reranked = lines[2], lines[3]
    assert plain.startswith("recall vs exact flat on 50 corpus-vector queries:")
    # 4 bytes of PQ codes per 32-d vector lose neighbours; re-ranking every row gets them all back.
    assert float(plain.split("recall@10 ")[1]) < 0.9
    assert reranked == (f"recall vs exact flat on 50 corpus-vector queries re-ranking {ROWS} candidates: "
                        "recall@1 1.000, recall@10 1.000")
