"""Start `start_retrieval.py` as a child process on a loopback port and wait until it serves.

The one way the pipeline, the benchmarks and the tests run a local retrieval server:

    with ServerProcess(["--retriever", "bm25", "--corpus", "c.jsonl", "--index", "bm25/"], Path("s.log")) as server:
        RetrievalClient(server.retrieve_url).retrieve(["query"], topk=3)
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
READY_MARKER = "RETRIEVAL READY"  # the line start_retrieval.py prints once it accepts requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python start_retrieval.py ARGS --port P` (P free when None); output goes to `log_path`."""

    def __init__(self, args: list, log_path: Path, port: int | None = None, python: str = sys.executable):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.retrieve_url = self.url + "/retrieve"
        self.args = [str(a) for a in args]
        self.log_path = Path(log_path)
        self.python = python
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [self.python, str(REPO / "start_retrieval.py"), *self.args, "--port", str(self.port)]

    def start(self, timeout: float = 180.0) -> ServerProcess:
        """Returns once the ready line is printed; raises RuntimeError with the log when the server
        exits or is not ready within `timeout` seconds."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(self.command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_MARKER in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"retrieval server exited with {self.proc.returncode} "
                                   f"(log {self.log_path}):\n{self.log()[-4000:]}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"retrieval server not ready after {timeout:.0f}s (log {self.log_path}):\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> ServerProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
