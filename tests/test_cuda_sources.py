"""The CUDA sources build on machines without a GPU.

* Every ``csrc/cuda/*.cu`` file compiles with nvcc alone, in one nvcc call per file, for every GPU
  architecture that setup.py builds by default (SASS of each, PTX of the newest) with setup.py's nvcc flags,
  warnings and register spills as errors. The .cu files are raw-pointer kernels that need no torch headers.
* The bindings (``csrc/cuda/bind_*.cpp``: ATen, c10/cuda) compile against the installed torch's CUDA headers
  where that torch ships them (a CPU wheel does), with opaque stand-ins for the cuBLAS / cuSPARSE /
  cuSOLVER handle types those headers name and a CUDA toolkit without those libraries lacks.

setup.py's ``DEFAULT_CUDA_ARCHS``, ``NVCC_FLAGS`` and ``cuda_arch_flags`` are read from its syntax tree
(importing setup.py would run the build).
"""
import ast
import os
import pathlib
import re
import shutil
import subprocess
import sysconfig

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
TORCH_INCLUDE = pathlib.Path(torch.__file__).parent / "include"


def _setup_definitions() -> dict:
    """DEFAULT_CUDA_ARCHS, NVCC_FLAGS and cuda_arch_flags as setup.py defines them."""
    source = (ROOT / "setup.py").read_text()
    found: dict = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("DEFAULT_CUDA_ARCHS", "NVCC_FLAGS"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.FunctionDef) and node.name == "cuda_arch_flags":
            namespace: dict = {}
            exec(compile(ast.Module(body=[node], type_ignores=[]), "setup.py", "exec"), namespace)
            found[node.name] = namespace[node.name]
    assert set(found) == {"DEFAULT_CUDA_ARCHS", "NVCC_FLAGS", "cuda_arch_flags"}, sorted(found)
    return found


SETUP = _setup_definitions()
ARCH_FLAGS = SETUP["cuda_arch_flags"](SETUP["DEFAULT_CUDA_ARCHS"])


def test_the_hot_ops_have_cuda_kernels():
    assert {p.stem for p in CU_FILES} >= {"composite", "greedy", "render_loss", "warp"}
    assert {p.stem for p in CUDA_DIR.glob("bind_*.cpp")} >= {f"bind_{p.stem}" for p in CU_FILES}


def test_default_archs_are_turing_to_hopper_with_ptx_of_the_newest():
    sass = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in (75, 80, 86, 89, 90)]
    assert ARCH_FLAGS == sass + ["-gencode=arch=compute_90,code=compute_90"]
    assert "--use_fast_math" not in SETUP["NVCC_FLAGS"]


@pytest.mark.parametrize("spec,archs", [("90", [("90", False)]), ("80;9.0+PTX", [("80", False), ("90", True)]),
                                        (" 75, 8.6 ", [("75", False), ("86", False)]), ("89+ptx", [("89", True)])])
def test_arch_list_format(spec, archs):
    expected = []
    for arch, ptx in archs:
        expected.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        if ptx:
            expected.append(f"-gencode=arch=compute_{arch},code=compute_{arch}")
    assert SETUP["cuda_arch_flags"](spec) == expected


@pytest.mark.parametrize("spec", ["", ";", "sm_90", "9.0+SASS"])
def test_arch_list_rejects_bad_entries(spec):
    with pytest.raises(ValueError, match="DTIFAST_CUDA_ARCHS"):
        SETUP["cuda_arch_flags"](spec)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH")
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cu_file_compiles_alone_for_every_default_arch(source, tmp_path):
    # One call: nvcc runs the front end once per virtual architecture and ptxas once per SASS target
    # (render_loss.cu, the largest, takes about 45 s of one core).
    obj = tmp_path / (source.stem + ".o")
    cmd = [NVCC, *SETUP["NVCC_FLAGS"], *ARCH_FLAGS, "--Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra",
           "-Xptxas", "-v,-warn-spills", "-c", str(source), "-o", str(obj)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)}\n{log}"
    assert obj.stat().st_size > 0
    # ptxas reports every kernel for every SASS target (the PTX target has no ptxas run).
    compiled = set(re.findall(r"Compiling entry function '[^']+' for 'sm_(\d+)'", log))
    assert compiled == set(re.findall(r"code=sm_(\d+)", " ".join(ARCH_FLAGS))), log


def _cuda_home() -> pathlib.Path:
    """The toolkit of the nvcc on PATH (which may be a wrapper script): nvcc's own TOP."""
    dry = subprocess.run([NVCC, "--dryrun", "-x", "cu", "-c", "none.cu", "-o", os.devnull], capture_output=True,
                         text=True, timeout=60)
    top = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
    assert top, dry.stdout + dry.stderr
    return pathlib.Path(top.group(1).strip()).resolve()


_STANDINS = {
    # Types named by ATen/cuda/CUDAContextLight.h and Exceptions.h; only the CUDA math libraries define them.
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t;\ntypedef int cublasStatus_t;\n",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;\ntypedef int cusparseStatus_t;\n",
    "cusolverDn.h": "typedef struct cusolverDnContext* cusolverDnHandle_t;\n",
    "cusolver_common.h": "typedef int cusolverStatus_t;\n",
    # Generated when torch is built; a CPU wheel leaves it out.
    "c10/cuda/impl/cuda_cmake_macros.h": "",
}


@pytest.mark.skipif(NVCC is None or CXX is None, reason="nvcc (for the CUDA runtime headers) or c++ not found")
@pytest.mark.skipif(not (TORCH_INCLUDE / "ATen" / "cuda" / "CUDAContext.h").is_file(),
                    reason="the installed torch ships no ATen/cuda headers")
def test_bindings_compile_against_torch_cuda_headers(tmp_path):
    standins = tmp_path / "standins"
    for name, text in _STANDINS.items():
        (standins / name).parent.mkdir(parents=True, exist_ok=True)
        (standins / name).write_text(f"#pragma once\n// stand-in for a syntax check\n{text}")
    unit = tmp_path / "bindings.cpp"  # one translation unit: torch's headers are parsed once
    unit.write_text("".join(f'#include "{p}"\n' for p in sorted(CUDA_DIR.glob("bind_*.cpp"))))
    cuda_include = _cuda_home() / "include"
    # torch's headers as system headers (their own warnings are not ours); real toolkit headers before the
    # stand-ins. GCC instantiates the templates (AT_DISPATCH bodies included) even with -fsyntax-only.
    includes = [TORCH_INCLUDE, TORCH_INCLUDE / "torch" / "csrc" / "api" / "include", cuda_include, standins,
                pathlib.Path(sysconfig.get_paths()["include"])]
    cmd = [CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-DDTIFAST_WITH_CUDA",
           *(f"-isystem{p}" for p in includes), str(unit)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
