#!/usr/bin/env bash
# GPU check of the custom ops, for a lent GPU machine (about 5 to 8 minutes):
#   1. build the extension with its CUDA kernels,
#   2. run the op tests on cuda (compiled CUDA and real Triton kernels against the reference; the
#      length-aware sequence ops of both against cuDNN nn.GRU on packed input, zero lengths and
#      NaN in the padding included),
#   3. time CUDA, Triton, the reference, cuDNN nn.GRU padded and packed, at the real history
#      lengths and at full length; torch.compile of the reference; the embedding op's bandwidth
#      against a device-to-device copy.
# Usage, from the repository root:  bash benchmarks/device_check.sh
# Real lengths come from $MARN_PREPARED (default data/prepared); without it benchmarks/ops.py prepares
# the default data in a temporary folder first (needs the project's dependencies).
# Writes its logs, CSV and JSON to $OUT (the device tool's folder) or reports/device_check/.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-reports/device_check}"
mkdir -p "$OUT_DIR"
PYTHON="${PYTHON:-$(command -v python3)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export MARN_BUILD_DIR="${MARN_BUILD_DIR:-$PWD/.build}"
export MAX_JOBS="${MAX_JOBS:-8}"

PREPARED="${MARN_PREPARED:-data/prepared}"
status=0

step() { echo; echo "=== $1 ($(date +%T))"; }

# Everything below needs a GPU that torch can use: say so at once instead of failing in every step.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU here (nvidia-smi missing or failing); run this script on a GPU machine" >&2
  exit 2
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: $PYTHON's torch sees no CUDA device (torch.cuda.is_available() is False)" >&2
  exit 2
fi

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"

step "build the extension with CUDA kernels"
timeout 240 "$PYTHON" - <<'EOF' 2>&1 | tee "$OUT_DIR/build.log" || status=1
import time
start = time.time()
from marn.ops import extension
status = extension.load()
print(status, f"in {time.time() - start:.0f} s")
assert status.has_cuda, status.problem
EOF

step "op tests on cuda"
# The CMake build is CI's (CPU) check; the rest runs on the GPU. Triton runs compiled, not interpreted.
MARN_TEST_DEVICE=cuda timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider tests/ops -k "not cmake" \
  2>&1 | tee "$OUT_DIR/tests.log" || status=1

step "benchmarks: reference, CUDA, Triton, cuDNN nn.GRU padded and packed (real and full lengths), copy bandwidth"
timeout 200 "$PYTHON" benchmarks/ops.py --device cuda --providers reference cuda triton gru gru_packed \
  --lengths real full --prepared "$PREPARED" --threads 0 --repeats 50 --budget 2 \
  --csv "$OUT_DIR/ops_cuda.csv" --json "$OUT_DIR/ops_cuda.json" 2>&1 | tee "$OUT_DIR/bench.log" || status=1

step "benchmarks: torch.compile of the reference (compile time in first_call_s)"
# Compiling the 20-step loop takes minutes; rows are written as they finish if time runs out.
timeout 180 "$PYTHON" benchmarks/ops.py --device cuda --providers reference compile --lengths full \
  --threads 0 --repeats 50 --budget 2 --csv "$OUT_DIR/ops_cuda_compile.csv" --json "$OUT_DIR/ops_cuda_compile.json" \
  2>&1 | tee "$OUT_DIR/bench_compile.log" || status=1

step "done: status $status"
exit $status
