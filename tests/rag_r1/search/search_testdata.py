"""The hand-written test corpus and the helper that runs start_retrieval.py on loopback."""
from __future__ import annotations

import json
from pathlib import Path

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


def write_jsonl(path: Path, passages=PASSAGES) -> Path:
    with path.open("w") as f:
        for pid, title, text in passages:
            f.write(json.dumps({"id": pid, "contents": passage_contents(title, text)}) + "\n")
    return path

