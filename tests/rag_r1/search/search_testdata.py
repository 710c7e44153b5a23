"""The hand-written test corpus and the helper that runs start_retrieval.py on loopback."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python start_retrieval.py ARGS` on a free loopback port; output goes to a log file."""

    def __init__(self, args: list[str], log_path: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> ServerProcess:
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "start_retrieval.py"), *self.args, "--port", str(self.port)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "RETRIEVAL READY" in self.log_path.read_text():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text()
