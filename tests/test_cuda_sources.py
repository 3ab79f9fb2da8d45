"""Every CUDA kernel file compiles with nvcc alone (``-arch=sm_90``, warnings as errors), so the kernels
cannot rot on machines without a GPU. The .cu files are raw-pointer kernels that need no torch headers;
their bindings (csrc/cuda/bind_*.cpp) are built by setup.py where torch has CUDA."""
import pathlib
import shutil
import subprocess

import pytest

CUDA_DIR = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_the_hot_ops_have_cuda_kernels():
    assert {p.stem for p in CU_FILES} >= {"composite", "greedy", "render_loss", "warp"}
    assert {p.stem for p in CUDA_DIR.glob("bind_*.cpp")} >= {f"bind_{p.stem}" for p in CU_FILES}


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH")
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cu_file_compiles_alone_with_nvcc(source, tmp_path):
    cmd = [NVCC, "-arch=sm_90", "-std=c++17", "-O3", "--Werror", "all-warnings", "-Xcompiler", "-Wall",
           "-c", str(source), "-o", str(tmp_path / (source.stem + ".o"))]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / (source.stem + ".o")).stat().st_size > 0
