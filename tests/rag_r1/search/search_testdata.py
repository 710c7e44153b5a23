"""The hand-written test corpus and the helper that runs start_retrieval.py on loopback."""
from __future__ import annotations

import json
from pathlib import Path

import httpx

from rag_r1.search.launcher import ServerProcess, free_port  # noqa: F401  (the tests import them from here)

ROOT = Path(__file__).resolve().parents[3]

# One unmistakable topic per passage, so "the obviously right passage" is well defined.
PASSAGES = [
    ("p0", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France."),
    ("p1", "Photosynthesis", "Photosynthesis is the process by which green plants use sunlight to turn water and carbon dioxide into sugar."),
    ("p2", "Mount Kilimanjaro", "Mount Kilimanjaro is a dormant volcano in Tanzania and the highest mountain in Africa."),
    ("p3", "Python (programming language)", "Python is a high-level programming language created by Guido van Rossum."),
    ("p4", "Great Barrier Reef", "The Great Barrier Reef is the largest coral reef system in the world, off the coast of Queensland, Australia."),
    ("p5", "Ludwig van Beethoven", "Ludwig van Beethoven was a German composer and pianist who wrote nine symphonies."),
    ("p6", "Penicillin", "Penicillin is an antibiotic discovered by Alexander Fleming in 1928."),
    ("p7", "Apollo 11", "Apollo 11 was the spaceflight that first landed humans on the Moon in 1969, with Neil Armstrong."),
]

# (query, id of the passage that must rank first)
KNOWN_ANSWERS = [
    ("Which tower in Paris is made of wrought iron?", "p0"),
    ("who discovered penicillin", "p6"),
    ("first astronauts to land on the moon", "p7"),
    ("highest mountain in Africa", "p2"),
]

LIMITS = {"max_topk": 5, "max_queries": 4, "max_query_chars": 200, "max_body_bytes": 4000}


def passage_contents(title: str, text: str) -> str:
    return f'"{title}"\n{text}'


CONTENTS = {pid: passage_contents(title, text) for pid, title, text in PASSAGES}


def server_answer(request: httpx.Request) -> httpx.Response:
    """What the retrieval server answers a request that reached it, for mock transports: its health on
    /health, 422 for topk < 1, else `topk` copies of passage p6 per query (scored when asked)."""
    if request.url.path == "/health":
        return httpx.Response(200, json={"status": "ok", "host": request.url.host})
    body = json.loads(request.content)
    if body["topk"] < 1:
        return httpx.Response(422, json={"error": "'topk' must be in 1..100, got 0"})
    hit = {"id": "p6", "contents": CONTENTS["p6"]}
    if body["return_scores"]:
        hit = {"document": hit, "score": 0.5}
    return httpx.Response(200, json={"result": [[hit] * body["topk"] for _ in body["queries"]]})


def write_jsonl(path: Path, passages=PASSAGES) -> Path:
    with path.open("w") as f:
        for pid, title, text in passages:
            f.write(json.dumps({"id": pid, "contents": passage_contents(title, text)}) + "\n")
    return path

