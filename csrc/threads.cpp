// dtifast::parallel_threads() -> int: how many threads one at::parallel_for of this extension runs on.
//
// ATen's parallel_for is an OpenMP loop inlined from its headers, so it is only parallel when this extension
// is compiled with -fopenmp (setup.py); a build without it silently runs every kernel on one thread. The test
// suite and `dtifast bench` read this to catch that.
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "common.h"

namespace dtifast {
namespace {

int64_t parallel_threads() {
  const int64_t n = at::get_num_threads();
  std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    const int t = at::get_thread_num();
    if (t >= 0 && t < n) seen[static_cast<size_t>(t)].store(1);
  });
  int64_t count = 0;
  for (const auto& s : seen) count += s.load();
  return count;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dtifast, m) { m.def("parallel_threads() -> int", &parallel_threads); }

}  // namespace dtifast
