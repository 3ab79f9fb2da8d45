#!/usr/bin/env bash
# The GPU check: what a lent H100/H200 runs, in one go, in under 10 minutes, and checks itself.
#   1. install: into the python that holds CUDA torch (no network needed: --no-deps), building
#      dtifast._C with its CUDA kernels for this GPU's architecture only;
#   2. GPU tests (JUnit XML): every op family's checklist on every backend with --device cuda (Triton
#      compiled for real, the CUDA kernels), the nn modules, the fused training step against the
#      reference, no synchronisation in a model step (CUDA's sync debug mode), the CUDA extension's
#      extra tests (layer bounds, grids above 65 535, determinism);
#   3. kernels as built: every Triton variant at upstream's shapes (CLEVR6, the largest L; batch 128
#      and a partial batch, float32 and bfloat16), registers and spills read from the driver, against
#      the CPU compile check's prediction (python -m dtifast.bench.device_kernels);
#   4. performance report: each op fused vs eager vs torch.compile at CLEVR6's shapes, training images/s
#      and peak memory per backend at batch 128 (CLEVR6, Tetrominoes), and the fake-tensor memory
#      estimate of the same steps (dtifast bench --device cuda);
#   5. the verdict (python -m dtifast.bench.headline): the last line says PASS or FAIL and the ratios.
# Each step has a time limit (seconds, from the environment): TEST_SECONDS=180, KERNEL_SECONDS=90,
# REPORT_SECONDS=120 (the report's own budget: it starts no case after it; a started one may run on up to
# 90 s). Install takes 1-2 min: at most 9.5 min in all, inside one 10-minute device command.
# Optional: TTQ_SECONDS>0 adds the time-to-quality run (Tetrominoes to ARI-FG 99 %) before the verdict.
# Usage: OUT=benchmarks/results/gpu bash benchmarks/gpu_check.sh   (exit status 0 only on PASS)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
TEST_SECONDS=${TEST_SECONDS:-180}
KERNEL_SECONDS=${KERNEL_SECONDS:-90}
REPORT_SECONDS=${REPORT_SECONDS:-120}
TTQ_SECONDS=${TTQ_SECONDS:-0}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0

PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  PY=.venv/bin/python
fi
step() { echo; echo "=== $1 ($(date +%T))"; }

step "1. install"
$PY -c "import torch, triton; assert torch.cuda.is_available(), 'torch sees no CUDA device'
print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)" || exit 1
ARCH=$($PY -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
if ! $PY -c "import torch, dtifast._C; assert torch._C._dispatch_has_kernel_for_dispatch_key(
    'dtifast::composite_layers', 'CUDA')" 2>/dev/null; then
  DTIFAST_CUDA_ARCHS=${DTIFAST_CUDA_ARCHS:-$ARCH} MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    $PY -m pip install -q --no-build-isolation --no-deps -e . || { echo "GPU CHECK FAIL | install failed"; exit 1; }
fi

step "2. GPU tests"
# SIGINT at the limit: pytest stops and still writes its XML. Workers: Triton compiles on every core.
PLUGINS=()
$PY -c "import xdist" 2>/dev/null && PLUGINS+=(-n "${TEST_WORKERS:-8}" --dist loadgroup)
$PY -c "import pytest_timeout" 2>/dev/null && PLUGINS+=(--timeout 180)
timeout -s INT "$TEST_SECONDS" $PY -m pytest -q -p no:cacheprovider --device cuda -m "not slow" \
  "${PLUGINS[@]}" --junitxml "$OUT/gpu_tests.xml" \
  tests/test_ops_warp.py tests/test_ops_composite.py tests/test_ops_greedy.py tests/test_ops_render.py \
  tests/test_ops_pointwise.py tests/test_ops_backend.py tests/test_nn_modules.py tests/test_triton_model_step.py \
  tests/test_host_syncs.py tests/test_native_cuda.py
TESTS_EXIT=$?  # 124: stopped at the time limit

step "3. kernels as built"
timeout "$KERNEL_SECONDS" $PY -m dtifast.bench.device_kernels --out "$OUT" --configs clevr6 --quiet

step "4. performance report"
timeout $((REPORT_SECONDS + 90)) $PY -m dtifast.cli bench --device cuda --out "$OUT" \
  --sections ops train memory-estimate --op-configs clevr6 --configs clevr6 tetro --batches 128 \
  --memory-configs clevr6 tetro --time-budget "$REPORT_SECONDS"

if [ "$TTQ_SECONDS" != 0 ]; then
  step "4b. time to quality"
  timeout $((${TTQ_SECONDS%.*} + 300)) $PY benchmarks/time_to_quality.py --device cuda --out "$OUT/ttq" \
    --max-seconds "$TTQ_SECONDS" || echo "TIME TO QUALITY FAILED"
fi

step "5. verdict"
$PY -m dtifast.bench.headline "$OUT" --tests-exit "$TESTS_EXIT" --config clevr6 --batch 128
