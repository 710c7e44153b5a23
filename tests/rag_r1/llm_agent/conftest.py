"""The agent's fixtures: the tiny byte-level tokenizer and a real BM25 retrieval server on loopback."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from rag_r1.search.launcher import ServerProcess


# One topic per passage so BM25's first hit for the test queries is unambiguous.
PASSAGES = {
    "p0": ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."),
    "p1": ("Penicillin", "Penicillin is an antibiotic discovered by Alexander Fleming in 1928."),
    "p2": ("Mount Kilimanjaro", "Mount Kilimanjaro is a dormant volcano in Tanzania, the highest mountain in Africa."),
    "p3": ("Apollo 11", "Apollo 11 first landed humans on the Moon in 1969."),
    "p4": ("Ludwig van Beethoven", "Beethoven was a German composer who wrote nine symphonies."),
}


@pytest.fixture(scope="session")
def tokenizer():
    from tiny_model import make_tokenizer

    return make_tokenizer()


class RetrievalServer:
    """`start_retrieval.py --retriever bm25` as a subprocess; `stats()` reads its /stats counters."""

    def __init__(self, workdir: Path):
        from rag_r1.search.bm25 import build_bm25

        corpus = workdir / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"id": pid, "contents": f'"{title}"\n{text}'}) + "\n"
                                  for pid, (title, text) in PASSAGES.items()))
        index = build_bm25(corpus, workdir / "bm25")
        self.server = ServerProcess(["--retriever", "bm25", "--corpus", corpus, "--index", index],
                                    workdir / "server.log").start(timeout=120)
        self.base = self.server.url
        self.url = self.server.retrieve_url

    def stats(self) -> dict:
        return httpx.get(self.base + "/stats").json()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def retrieval_server(tmp_path_factory):
    server = RetrievalServer(tmp_path_factory.mktemp("retrieval"))
    yield server
    server.stop()
