// dtifast::cpu_capability() -> str and dtifast::set_cpu_capability(str name): the instruction set of the
// CPU vector kernels (cpu_capability.h). An explicit choice the CPU cannot run is an error, never a silent
// fallback to another path.
#include "cpu_capability.h"

#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace dtifast {
namespace {

constexpr const char* kNames[] = {"scalar", "avx2", "avx512"};
constexpr int kCount = 3;

bool cpu_supports(CpuCapability c) {
  switch (c) {
#if DTIFAST_X86_SIMD
    case CpuCapability::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuCapability::kAvx512:
      // The instruction sets ATen's 512-bit Vectorized uses (its -mavx512f -mavx512bw -mavx512vl -mavx512dq).
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    case CpuCapability::kScalar:
      return true;
    default:
      return false;
  }
}

CpuCapability parse(const std::string& name) {
  for (int c = 0; c < kCount; ++c) {
    if (name == kNames[c]) {
      const auto capability = static_cast<CpuCapability>(c);
      TORCH_CHECK(cpu_supports(capability), "CPU capability '", name,
                  "' is not available on this CPU or in this build");
      return capability;
    }
  }
  TORCH_CHECK(false, "unknown CPU capability '", name, "' (expected scalar, avx2 or avx512)");
}

CpuCapability best_supported() {
  for (int c = kCount - 1; c > 0; --c) {
    if (cpu_supports(static_cast<CpuCapability>(c))) return static_cast<CpuCapability>(c);
  }
  return CpuCapability::kScalar;
}

CpuCapability initial() {
  const char* env = std::getenv("DTIFAST_CPU_CAPABILITY");
  return env != nullptr && *env != '\0' ? parse(env) : best_supported();
}

// Read from the environment at the first use (a bad value raises there, and again at the next use).
std::atomic<int>& current() {
  static std::atomic<int> value{static_cast<int>(initial())};
  return value;
}

std::string get_capability() { return kNames[static_cast<int>(cpu_capability())]; }

void set_capability(const std::string& name) { current().store(static_cast<int>(parse(name))); }

}  // namespace

CpuCapability cpu_capability() { return static_cast<CpuCapability>(current().load(std::memory_order_relaxed)); }

TORCH_LIBRARY_FRAGMENT(dtifast, m) {
  m.def("cpu_capability() -> str", &get_capability);
  m.def("set_cpu_capability(str name) -> ()", &set_capability);
}

}  // namespace dtifast
