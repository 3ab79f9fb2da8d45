#!/usr/bin/env bash
# GPU check for the fused Triton ops, on a lent GPU box with this repository copied (a few minutes):
#   1. install (the CUDA torch already in the environment is kept; `make install` otherwise);
#   2. run the op tests and the fused training-step test on CUDA (same tests as CPU CI);
#   3. print fused vs eager vs torch.compile times and peak memory per op, and a CLEVR6 train step at batch 128.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  PY=.venv/bin/python
fi
if ! $PY -c "import dtifast" 2>/dev/null; then
  $PY -m pip install -q --no-build-isolation -e ".[dev]" || make install
fi
$PY -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)"
export TRITON_INTERPRET=0
timeout 240 $PY -m pytest -q -p no:xdist -p no:cacheprovider --device cuda -m "not slow" \
  tests/test_triton_warp.py tests/test_triton_composite.py tests/test_triton_greedy.py tests/test_nn_modules.py \
  tests/test_triton_model_step.py || echo "GPU TESTS FAILED (status $?)"
timeout 300 $PY benchmarks/gpu_report.py "$@"
