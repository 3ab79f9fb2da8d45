"""Build script for dtifast.

The C++ CPU kernels in ``csrc/*.cpp`` are always compiled into ``dtifast._C``. The CUDA kernels in
``csrc/cuda/`` are added when the installed torch was built with CUDA and ``nvcc`` is found.

Knobs (environment variables):
    DTIFAST_SKIP_CUDA_BUILD=1   never build the CUDA kernels.
    DTIFAST_CUDA_ARCHS="80;90"  compute capabilities to compile for (default: 90).
    MAX_JOBS=N                  parallel compile jobs (torch's ninja build honours it).

Install with ``pip install --no-build-isolation -e .`` so that the build uses the torch already installed.
"""
import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def _want_cuda() -> bool:
    if os.environ.get("DTIFAST_SKIP_CUDA_BUILD", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extensions():
    cpu_sources = sorted(glob.glob("csrc/*.cpp"))
    # The headers hold most of the kernel math: a changed header must rebuild the sources (setuptools
    # otherwise only compares each .cpp with its object file).
    headers = sorted(glob.glob("csrc/*.h") + glob.glob("csrc/cuda/*.h") + glob.glob("csrc/cuda/*.cuh"))
    # at::parallel_for is an inline OpenMP loop in ATen's headers: without -fopenmp here it compiles to a
    # serial loop. The extension then resolves libgomp.so.1 to the copy torch has already loaded.
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]
    link_flags = ["-fopenmp"]
    if _want_cuda():
        archs = os.environ.get("DTIFAST_CUDA_ARCHS", "90").split(";")
        nvcc_flags = ["-O3", "--use_fast_math", "-std=c++17"]
        for arch in archs:
            nvcc_flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        return [
            CUDAExtension(
                "dtifast._C",
                cpu_sources + cuda_sources,
                define_macros=[("DTIFAST_WITH_CUDA", None)],
                extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                extra_link_args=link_flags,
                depends=headers,
            )
        ]
    return [CppExtension("dtifast._C", cpu_sources, extra_compile_args={"cxx": cxx_flags},
                         extra_link_args=link_flags, depends=headers)]


setup(
    packages=find_packages(include=["dtifast", "dtifast.*"]) + ["dtifast.kernels", "dtifast.configs"],
    package_dir={"dtifast.kernels": "kernels", "dtifast.configs": "configs"},
    package_data={"dtifast.configs": ["*.yml"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=False)},
)
