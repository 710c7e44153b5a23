#!/usr/bin/env bash
# The test suite on the lent GPU machine (no internet): stage the parcel of wheels this call
# carried; once every parcel has arrived, install them and run the suite.
#
# From the session, after `bash scripts/gpu/fetch_wheels.sh` made .whl/1 ... .whl/N, one device
# call per parcel, each right after the last (a machine goes back after 30 s idle, and /tmp with it):
#     run(command="bash scripts/gpu/check.sh", carry=[".whl/1"], timeout_s=120)
#     ...
#     run(command="bash scripts/gpu/check.sh", carry=[".whl/N"], timeout_s=600)   # installs, tests
# The last call's $OUT brings back pytest.log, junit.xml, versions.txt and pip-check.txt.
# Settings (environment): CHECK_TIMEOUT (whole pytest run, s; default 540), TEST_TIMEOUT (one
# test, s; default 300), PYTEST_ARGS (added to pytest's arguments, e.g. "-x" or "-m 'not slow'"),
# WITH_BENCH=1 (first run scripts/gpu/bench.sh, the HF rollout vs bare generate on CUDA; carry
# .whl/smollm2-shape with the last parcel then).
set -uo pipefail
shopt -s nullglob
cd "$(dirname "$0")/../.."
STAGE=/tmp/wheels
SITE=/tmp/site
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$STAGE" "$OUT"

for marker in .whl/*/PARCEL; do
  read -r k n < "$marker"
  cp "$(dirname "$marker")"/*.whl* "$STAGE"/ || exit 1
  echo "$n" > "$STAGE/COUNT"
  touch "$STAGE/arrived-$k"
done
arrived=("$STAGE"/arrived-*)
total=$(cat "$STAGE/COUNT" 2>/dev/null || echo "?")
if [ "${#arrived[@]}" != "$total" ]; then
  echo "staged parcels: ${arrived[*]##*/arrived-} of $total; carry the others in the next calls"
  exit 0
fi

# Wheels that travelled in pieces: NAME.whl.part-aa, -ab, ... in order.
for first in "$STAGE"/*.whl.part-aa; do
  whl=${first%.part-aa}
  cat "$whl".part-* > "$whl" && rm "$whl".part-*
done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "$STAGE"/*.whl || exit 1
export PYTHONPATH=$SITE:$PWD
# Nothing can be fetched there: libraries must not wait on the network.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

{
  nvidia-smi -L
  python3 - <<'EOF'
import importlib.metadata as m, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())
for name in ("transformers", "sentence-transformers", "peft", "accelerate", "ray", "tensordict", "numpy",
             "pandas", "pyarrow", "pytest", "pytest-timeout", "faiss-cpu", "hydra-core"):
    print(name, m.version(name))
EOF
} > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"
python3 -m pip check > "$OUT/pip-check.txt" 2>&1  # the machine's own conflicts too; read, not fatal
if [ -n "${WITH_BENCH:-}" ]; then  # the rollout vs bare generate numbers first: they are short
  timeout 240 bash scripts/gpu/bench.sh > "$OUT/bench.log" 2>&1; tail -30 "$OUT/bench.log"
fi

# What `make test` runs (`python -m pytest -q tests`), with the interpreter that holds torch+CUDA:
# every test, the GPU-path ones (marked cuda) included; a stuck test fails after TEST_TIMEOUT.
eval "set -- ${PYTEST_ARGS:-}"
timeout "${CHECK_TIMEOUT:-540}" python3 -m pytest -q tests -p no:cacheprovider -rfEs \
  --timeout="${TEST_TIMEOUT:-300}" --durations=30 --junitxml="$OUT/junit.xml" "$@" 2>&1 | tee "$OUT/pytest.log"
