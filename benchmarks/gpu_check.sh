#!/usr/bin/env bash
# Everything a lent GPU box should run, in one go (steps 1-3 take about 8 minutes on one H100):
#   1. install: keeps the CUDA torch already in the environment, builds dtifast._C with its CUDA kernels;
#   2. the GPU tests: Triton ops, the native CUDA kernels and the fused training step, i.e. the CPU suite's
#      op tests with --device cuda;
#   3. the performance report, `dtifast bench --device cuda` (JSON, Markdown, PNG in $OUT) within
#      $REPORT_SECONDS of timed work;
#   4. time to quality: generated Tetrominoes, fused path, batch 128, until ARI-FG >= 99 % or $TTQ_SECONDS
#      of training ($TTQ_SECONDS=0 leaves it out, for a short device lease).
# Usage: OUT=benchmarks/results REPORT_SECONDS=300 TTQ_SECONDS=600 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
REPORT_SECONDS=${REPORT_SECONDS:-300}
TTQ_SECONDS=${TTQ_SECONDS:-600}
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  PY=.venv/bin/python
fi
if ! $PY -c "import torch, dtifast._C" 2>/dev/null; then
  $PY -m pip install -q --no-build-isolation -e ".[dev]" || make install
fi
$PY -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)"
export TRITON_INTERPRET=0
status=0
timeout 300 $PY -m pytest -q -p no:xdist -p no:cacheprovider --device cuda -m "not slow" \
  tests/test_triton_warp.py tests/test_triton_composite.py tests/test_triton_greedy.py tests/test_nn_modules.py \
  tests/test_triton_model_step.py tests/test_native_cuda.py || { status=$?; echo "GPU TESTS FAILED (status $status)"; }
timeout $((REPORT_SECONDS + 240)) $PY -m dtifast.cli bench --device cuda --out "$OUT" --time-budget "$REPORT_SECONDS" \
  || { status=$?; echo "REPORT FAILED (status $status)"; }
if [ "$TTQ_SECONDS" != 0 ]; then
  timeout $((${TTQ_SECONDS%.*} + 300)) $PY benchmarks/time_to_quality.py --device cuda --out "$OUT/ttq" \
    --max-seconds "$TTQ_SECONDS" || { status=$?; echo "TIME TO QUALITY FAILED (status $status)"; }
fi
exit $status
