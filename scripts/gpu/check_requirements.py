"""Does pip resolve requirements.txt (the GPU stack) to the versions it pins? A dry run: nothing is
installed, and no GPU is needed.

    python scripts/gpu/check_requirements.py                 # requirements.txt: torch, vllm, transformers
    python scripts/gpu/check_requirements.py -r requirements-cpu.txt --packages transformers fastapi

Runs `pip install --dry-run --ignore-installed -r FILE --report REPORT` (about a minute: pip reads
the metadata of every package from the index) and checks that the resolved versions of the named
packages are the ones FILE pins. vLLM pins its own torch and bounds transformers, so a pin that
disagrees with it would otherwise surface only when installing on the GPU machine. A local build
tag counts as the same version (torch 2.13.0+cpu is torch 2.13.0).

Prints each package's pin and resolved version and the time taken. Exit status: 0 all match,
1 a version differs, 2 pip found no resolution, 3 the package index did not answer.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("torch", "vllm", "transformers")
# What pip prints when it cannot reach the index (urllib3's and the resolver's words).
UNREACHABLE = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
               "Name or service not known", "Network is unreachable", "ConnectTimeoutError", "ReadTimeoutError",
               "ProxyError", "Could not fetch URL")
MATCH, MISMATCH, NO_RESOLUTION, UNREACHABLE_INDEX = 0, 1, 2, 3


def canonical(name: str) -> str:
    """PEP 503 names: "Sentence_Transformers" and "sentence-transformers" are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(requirements: Path) -> dict[str, str]:
    """{canonical name: version} of every `name==version` line (extras and comments ignored)."""
    pins = {}
    for line in requirements.read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;#]+)", line)
        if match:
            pins[canonical(match.group(1))] = match.group(3)
    return pins


def resolved_versions(report: dict) -> dict[str, str]:
    """{canonical name: version} of what a `pip install --report` would install."""
    return {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}


def same_version(pin: str, resolved: str | None) -> bool:
    return resolved is not None and resolved.split("+")[0] == pin


@dataclass
class Outcome:
    status: int
    message: str
    resolved: dict[str, str]
    seconds: float


def check(requirements: Path, packages: tuple[str, ...] = CHECKED, timeout_s: float = 300) -> Outcome:
    pins = pinned_versions(requirements)
    unpinned = [p for p in packages if canonical(p) not in pins]
    if unpinned:
        raise SystemExit(f"{requirements} pins no version of {unpinned} (name==version)")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--retries", "1", "-r", str(requirements), "--report", str(report_path)]
        try:
            pip = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return Outcome(UNREACHABLE_INDEX, f"pip did not resolve within {timeout_s:.0f} s",
                           {}, time.perf_counter() - start)
        seconds = time.perf_counter() - start
        output = pip.stdout + pip.stderr
        if pip.returncode != 0:
            errors = [line for line in output.splitlines() if line.startswith("ERROR")] or output.splitlines()[-15:]
            offline = next((marker for marker in UNREACHABLE if marker in output), None)
            if offline:
                return Outcome(UNREACHABLE_INDEX, f"the package index did not answer ({offline})", {}, seconds)
            return Outcome(NO_RESOLUTION, "pip found no resolution:\n" + "\n".join(errors), {}, seconds)
        resolved = resolved_versions(json.loads(report_path.read_text()))
    wanted = {canonical(p): pins[canonical(p)] for p in packages}
    got = {name: resolved.get(name) for name in wanted}
    lines = [f"{name:<14} pinned {pin:<12} resolved {got[name]}" for name, pin in wanted.items()]
    differs = [name for name, pin in wanted.items() if not same_version(pin, got[name])]
    status = MISMATCH if differs else MATCH
    verdict = f"differ: {differs}" if differs else "all as pinned"
    message = "\n".join(lines + [f"{requirements.name}: {verdict} ({len(resolved)} packages, {seconds:.0f} s)"])
    return Outcome(status, message, got, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-r", "--requirements", type=Path, default=ROOT / "requirements.txt")
    parser.add_argument("--packages", nargs="+", default=list(CHECKED), help="whose resolved version must equal the pin")
    parser.add_argument("--timeout", type=float, default=300, help="seconds pip may take")
    args = parser.parse_args()
    outcome = check(args.requirements.resolve(), tuple(args.packages), args.timeout)
    print(outcome.message)
    raise SystemExit(outcome.status)


if __name__ == "__main__":
    main()
