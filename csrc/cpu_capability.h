// Which instruction set the CPU kernels with vector paths (csrc/warp.cpp) run on.
//
// The vector kernels are compiled once per instruction set (csrc/x86/avx2.cpp, avx512.cpp) and
// picked at run time: the best one this CPU supports, or the one DTIFAST_CPU_CAPABILITY (scalar|avx2|avx512)
// names, read at the first kernel call. dtifast::cpu_capability() reports the choice and
// dtifast::set_cpu_capability(name) changes it, so tests compare the vector paths with the scalar one.
#pragma once

// The per-instruction-set files need GCC's `#pragma GCC target` and x86-64 intrinsics; elsewhere (other
// architectures, Clang) only the scalar path is built.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DTIFAST_X86_SIMD 1
#endif

namespace dtifast {

enum class CpuCapability : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

CpuCapability cpu_capability();

#if DTIFAST_X86_SIMD
// The kernel table of the instruction set in use: avx512(), avx2() (csrc/x86/) or the scalar one.
template <typename Table>
Table table_for_capability(const Table& scalar, Table (*avx2)(), Table (*avx512)()) {
  switch (cpu_capability()) {
    case CpuCapability::kAvx512:
      return avx512();
    case CpuCapability::kAvx2:
      return avx2();
    case CpuCapability::kScalar:
      break;
  }
  return scalar;
}
#endif

}  // namespace dtifast
