// The CPU's own arithmetic limits, measured with the kernels' vector code
// (torch.ops.statetap.peak_rate): how many float FMAs, or vector exps (simd::exp), per second
// all threads reach with the instruction set the kernels run with.  The CPU benchmark suite
// states each kernel's distance to its compute bound with these rates.
//
// Each thread runs kChains independent dependency chains (enough to cover the FMA latency on
// every pipe) for `iterations` steps; lanes are counted, so an AVX-512 FMA is 16.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <chrono>
#include <string>
#include <vector>

#include "isa.h"
#include "simd.h"

namespace statetap {
namespace {

using simd::F;

constexpr int kChains = 16;

struct Peak {
  struct Args {
    bool exp;            // vector exps, else FMAs
    int64_t iterations;  // steps of every chain
    float* sink;         // [threads]: the chains' sum (keeps the work observable)
  };

  template <int W>
  static STATETAP_INLINE void rows(const Args& a, int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      a.sink[row] = a.exp ? chains<W, true>(a.iterations) : chains<W, false>(a.iterations);
    }
  }

  /// kChains independent chains of `iterations` steps (all in registers); their sum.
  template <int W, bool EXP>
  static STATETAP_INLINE float chains(int64_t iterations) {
    F<W> acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = simd::broadcast<W>(0.5f + 0.01f * c);
    const F<W> scale = simd::broadcast<W>(EXP ? -1.0f : 0.999999f);
    const F<W> shift = simd::broadcast<W>(1e-6f);
    for (int64_t i = 0; i < iterations; ++i) {
      for (int c = 0; c < kChains; ++c) {
        // x -> e^{-x} converges to 0.567; x -> 0.999999 x + 1e-6 to 1: no overflow either way
        if constexpr (EXP) {
          acc[c] = simd::exp<W>(acc[c] * scale);
        } else {
          acc[c] = acc[c] * scale + shift;
        }
      }
    }
    F<W> total{};
    for (int c = 0; c < kChains; ++c) total = total + acc[c];
    return simd::hsum<W>(total);
  }
};

/// Float operations (FMAs or exps, counted per lane) per second over all threads.
double peak_rate(const std::string& kind, int64_t iterations) {
  TORCH_CHECK_VALUE(kind == "fma" || kind == "exp", "kind must be 'fma' or 'exp', got '", kind,
                    "'");
  TORCH_CHECK_VALUE(iterations > 0, "iterations must be positive, got ", iterations);
  const Isa isa = current_isa();
  const int64_t threads = at::get_num_threads();
  std::vector<float> sink(threads);
  Peak::Args args{kind == "exp", iterations, sink.data()};
  const auto start = std::chrono::steady_clock::now();
  parallel_rows<Peak>(isa, args, threads, kParallelWork);  // one row per thread
  const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
  return static_cast<double>(threads) * iterations * kChains * isa_width(isa) / seconds.count();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(statetap, m) {
  m.def("peak_rate(str kind, int iterations) -> float", peak_rate);
}

}  // namespace statetap
