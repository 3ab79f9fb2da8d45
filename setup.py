"""Build script for dtifast.

The C++ CPU kernels in ``csrc/*.cpp`` and ``csrc/x86/*.cpp`` (vector builds per instruction set) are always
compiled into ``dtifast._C``. The CUDA kernels in ``csrc/cuda/`` are added when the installed torch was built
with CUDA and ``nvcc`` is found.

Knobs (environment variables):
    DTIFAST_SKIP_CUDA_BUILD=1   never build the CUDA kernels.
    DTIFAST_CUDA_ARCHS="..."    GPU architectures to compile the CUDA kernels for. Default
                                ``DEFAULT_CUDA_ARCHS`` below: machine code (SASS) for sm_75 (Turing),
                                sm_80 (A100), sm_86 (RTX 30), sm_89 (RTX 40, L4) and sm_90 (H100), plus PTX of
                                compute_90, which the driver JIT-compiles on newer GPUs. Format: compute
                                capabilities separated by ``;`` (or ``,`` / spaces), written ``90`` or ``9.0``;
                                a ``+PTX`` suffix also embeds that architecture's PTX. Examples: ``"90"``
                                (one GPU kind, fastest build), ``"80;90+PTX"``, ``"8.6"``.
    MAX_JOBS=N                  parallel compile jobs (torch's ninja build honours it).

Install with ``pip install --no-build-isolation -e .`` so that the build uses the torch already installed.
tests/test_cuda_sources.py compiles every ``.cu`` file with ``NVCC_FLAGS`` for ``DEFAULT_CUDA_ARCHS``
(it reads both, and ``cuda_arch_flags``, from this file's syntax tree: keep them literal and self-contained).
"""
import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

# The GPU architectures built by default (format: see DTIFAST_CUDA_ARCHS above).
DEFAULT_CUDA_ARCHS = "75;80;86;89;90+PTX"

# nvcc options of every .cu file besides the architectures. No --use_fast_math: its flush-to-zero and
# approximate division would move sampling coordinates by an ulp against ATen's grid sampler, which decides
# pixel-exact taps (csrc/sampling.h source_index); the kernels are memory-bound, so it would buy little.
NVCC_FLAGS = ("-O3", "-std=c++17")


def cuda_arch_flags(spec: str) -> list:
    """nvcc ``-gencode`` flags for an architecture list such as ``"75;80;9.0+PTX"`` (see the docstring)."""
    flags = []
    for entry in spec.replace(",", ";").replace(" ", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        ptx = entry.upper().endswith("+PTX")
        arch = (entry[:-4] if ptx else entry).replace(".", "")
        if not arch.isdigit():
            raise ValueError(f"DTIFAST_CUDA_ARCHS: bad architecture {entry!r} in {spec!r} (e.g. '80', '8.6', '90+PTX')")
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{arch},code=compute_{arch}")
    if not flags:
        raise ValueError(f"DTIFAST_CUDA_ARCHS names no architecture: {spec!r}")
    return flags


def _want_cuda() -> bool:
    if os.environ.get("DTIFAST_SKIP_CUDA_BUILD", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extensions():
    cpu_sources = sorted(glob.glob("csrc/*.cpp"))
    # The vector kernels built per instruction set (target pragmas). The linker keeps the first copy of an
    # inline function that several objects emit, and a copy compiled for AVX2 must never be the one that
    # baseline code calls: they must come last in the link, and setuptools links in sorted path order.
    simd_sources = sorted(glob.glob("csrc/x86/*.cpp"))
    # The headers hold most of the kernel math: a changed header must rebuild the sources (setuptools
    # otherwise only compares each .cpp with its object file).
    headers = sorted(glob.glob("csrc/*.h") + glob.glob("csrc/cuda/*.h") + glob.glob("csrc/cuda/*.cuh"))
    # at::parallel_for is an inline OpenMP loop in ATen's headers: without -fopenmp here it compiles to a
    # serial loop. The extension then resolves libgomp.so.1 to the copy torch has already loaded.
    # No contraction of a * b + c into fused multiply-adds: GCC contracts C++ by default wherever the target
    # has FMA, which the vector builds (csrc/x86/) do, and one rounding less moves sampling coordinates
    # by an ulp against the baseline build and ATen (csrc/sampling.h source_index).
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off"]
    link_flags = ["-fopenmp"]
    assert sorted(cpu_sources + simd_sources + glob.glob("csrc/cuda/*"))[-len(simd_sources):] == simd_sources, \
        "csrc/x86/ must sort after every other source (see above)"
    if _want_cuda():
        nvcc_flags = list(NVCC_FLAGS) + cuda_arch_flags(os.environ.get("DTIFAST_CUDA_ARCHS") or DEFAULT_CUDA_ARCHS)
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        return [
            CUDAExtension(
                "dtifast._C",
                cpu_sources + cuda_sources + simd_sources,
                define_macros=[("DTIFAST_WITH_CUDA", None)],
                extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                extra_link_args=link_flags,
                depends=headers,
            )
        ]
    return [CppExtension("dtifast._C", cpu_sources + simd_sources, extra_compile_args={"cxx": cxx_flags},
                         extra_link_args=link_flags, depends=headers)]


setup(
    packages=find_packages(include=["dtifast", "dtifast.*"]) + ["dtifast.kernels", "dtifast.configs"],
    package_dir={"dtifast.kernels": "kernels", "dtifast.configs": "configs"},
    package_data={"dtifast.configs": ["*.yml"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=False)},
)
