// Row helpers shared by the RWKV WKV kernels (wkv4.cpp, wkv6.cpp, wkv7.cpp), written with
// simd.h for any width W.
#pragma once

#include <cstdint>

#include "dispatch.h"
#include "simd.h"

namespace statetap::wkv {

/// Round n up to whole vectors of W floats.
inline int64_t padded(int64_t n, int64_t W) { return (n + W - 1) / W * W; }

/// dst[0 .. n) = src[offset .. offset + n) as float32, dst[n .. n_pad) = 0 (so padded lanes
/// stay zero through the updates).
inline void load_padded(const FloatRows& src, int64_t offset, int64_t n, int64_t n_pad,
                        float* dst) {
  const float* row = src.row(offset, n, dst);
  if (row != dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = row[i];
  }
  for (int64_t i = n; i < n_pad; ++i) dst[i] = 0.0f;
}

/// out[i] = e^{x[i]} for i < n_pad (n_pad a multiple of W), vectorised.
template <int W>
STATETAP_INLINE void exp_row(const float* x, int64_t n_pad, float* out) {
  for (int64_t i = 0; i < n_pad; i += W) simd::store<W>(out + i, simd::exp<W>(simd::load<W>(x + i)));
}

}  // namespace statetap::wkv
