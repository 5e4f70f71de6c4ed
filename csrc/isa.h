// Run-time choice of the instruction set a CPU kernel runs with.
//
// A kernel is a struct with `Args` and a member template `template <int W> static void
// rows(const Args&, int64_t begin, int64_t end)`, always-inline, written with simd.h.  Below,
// one function per ISA (each in its own `target`, W = 16 / 8 / 1) inlines that body, so the
// AVX-512 and AVX2 code exists only inside those functions: nothing built for a wide ISA is
// shared with the scalar path.  `parallel_rows` picks the function once per call, from the CPU
// (`__builtin_cpu_supports`) or from STATETAP_CPU_ISA=avx512|avx2|scalar, and splits the rows
// over threads with at::parallel_for.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace statetap {

enum class Isa { scalar, avx2, avx512 };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    default:
      return "scalar";
  }
}

inline bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
}

/// The ISA kernels run with now: STATETAP_CPU_ISA if set (ValueError if this CPU lacks it),
/// else the widest one the CPU supports.  Read at every call, so a test may switch it.
inline Isa current_isa() {
  const char* forced = std::getenv("STATETAP_CPU_ISA");
  if (forced != nullptr && *forced != '\0') {
    std::string name(forced);
    Isa isa;
    if (name == "avx512") {
      isa = Isa::avx512;
    } else if (name == "avx2") {
      isa = Isa::avx2;
    } else if (name == "scalar") {
      isa = Isa::scalar;
    } else {
      TORCH_CHECK_VALUE(false, "STATETAP_CPU_ISA=", name,
                        " is not an instruction set; expected avx512, avx2 or scalar");
    }
    TORCH_CHECK_VALUE(isa_supported(isa), "STATETAP_CPU_ISA=", name,
                      ", but this CPU does not support ", name);
    return isa;
  }
  if (isa_supported(Isa::avx512)) return Isa::avx512;
  if (isa_supported(Isa::avx2)) return Isa::avx2;
  return Isa::scalar;
}

#define STATETAP_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define STATETAP_TARGET_AVX2 __attribute__((target("avx2,fma")))

template <class Kernel>
STATETAP_TARGET_AVX512 void rows_avx512(const typename Kernel::Args& args, int64_t begin,
                                        int64_t end) {
  Kernel::template rows<16>(args, begin, end);
}

template <class Kernel>
STATETAP_TARGET_AVX2 void rows_avx2(const typename Kernel::Args& args, int64_t begin,
                                    int64_t end) {
  Kernel::template rows<8>(args, begin, end);
}

template <class Kernel>
void rows_scalar(const typename Kernel::Args& args, int64_t begin, int64_t end) {
  Kernel::template rows<1>(args, begin, end);
}

/// Floats per vector of `isa`.
inline int isa_width(Isa isa) {
  return isa == Isa::avx512 ? 16 : isa == Isa::avx2 ? 8 : 1;
}

/// Work (state updates) below which a call runs on the calling thread alone: waking the
/// other threads costs more than it saves (and, on a busy machine, may wait for a time slice).
constexpr int64_t kParallelWork = 1 << 15;

/// Run `Kernel::rows<W>` over rows [0, n) with the width of `isa`, split over threads when the
/// call has at least kParallelWork state updates (`work_per_row` each; decode steps pass theirs).
template <class Kernel>
void parallel_rows(Isa isa, const typename Kernel::Args& args, int64_t n,
                   int64_t work_per_row = kParallelWork) {
  void (*fn)(const typename Kernel::Args&, int64_t, int64_t) =
      isa == Isa::avx512 ? rows_avx512<Kernel>
      : isa == Isa::avx2 ? rows_avx2<Kernel>
                         : rows_scalar<Kernel>;
  const int64_t grain = (kParallelWork + work_per_row - 1) / std::max<int64_t>(work_per_row, 1);
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

}  // namespace statetap
