// Row helpers shared by the RWKV WKV kernels (wkv4.cpp, wkv6.cpp, wkv7.cpp), written with
// simd.h for any width W.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <vector>

#include "dispatch.h"
#include "instrumentation.h"
#include "simd.h"

namespace statetap::wkv {

/// Tokens ahead whose rows a kernel prefetches (FloatRows::prefetch).
constexpr int64_t kPrefetchAhead = 2;

/// Round n up to whole vectors of W floats.
inline int64_t padded(int64_t n, int64_t W) { return (n + W - 1) / W * W; }

/// The sizes a [K, V]-state kernel (RWKV-5/6/7) runs with: H, L, K, V and K, V padded to whole
/// vectors of `width` floats (the base of its Args).
struct MatrixDims {
  int64_t heads, length, key_dim, value_dim, key_pad, value_pad;

  /// From r [B, L, H, K] and v [B, L, H, V].
  static MatrixDims of(const at::Tensor& r, const at::Tensor& v, int64_t width) {
    return {r.size(2), r.size(1), r.size(3), v.size(3), padded(r.size(3), width),
            padded(v.size(3), width)};
  }
};

/// Prefetch the rows of token t + kPrefetchAhead (none past the sequence) of one head in
/// [B, L, H, *] layouts: K floats of each tensor in `keys` (null entries skipped) and V floats
/// of `values`; key_at and value_at are token t's offsets.
STATETAP_INLINE void prefetch_ahead(std::initializer_list<const FloatRows*> keys,
                                    const FloatRows& values, int64_t t, int64_t key_at,
                                    int64_t value_at, const MatrixDims& d) {
  if (t + kPrefetchAhead >= d.length) return;
  const int64_t rows = kPrefetchAhead * d.heads;  // token rows between t and the one ahead
  for (const FloatRows* key : keys) {
    if (key != nullptr) key->prefetch(key_at + rows * d.key_dim, d.key_dim);
  }
  values.prefetch(value_at + rows * d.value_dim, d.value_dim);
}

/// dst[0 .. n) = src[offset .. offset + n) as float32, dst[n .. n_pad) = 0 (so padded lanes
/// stay zero through the updates).
STATETAP_INLINE void load_padded(const FloatRows& src, int64_t offset, int64_t n, int64_t n_pad,
                                 float* dst) {
  const float* row = src.row(offset, n, dst);
  if (row != dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = row[i];
  }
  for (int64_t i = n; i < n_pad; ++i) dst[i] = 0.0f;
}

/// The same row, read-only: the tensor's own memory where it is float32 and needs no padding
/// (n == n_pad), else `buffer` filled by load_padded.
STATETAP_INLINE const float* padded_row(const FloatRows& src, int64_t offset, int64_t n,
                                        int64_t n_pad, float* buffer) {
  if (src.dtype == at::kFloat && n == n_pad) return static_cast<const float*>(src.data) + offset;
  load_padded(src, offset, n, n_pad, buffer);
  return buffer;
}

/// out[i] = e^{x[i]} for i < n_pad (n_pad a multiple of W), vectorised.
template <int W>
STATETAP_INLINE void exp_row(const float* x, int64_t n_pad, float* out) {
  for (int64_t i = 0; i < n_pad; i += W) simd::store<W>(out + i, simd::exp<W>(simd::load<W>(x + i)));
}

/// The [K, V] state block of `task` from `initial` ([tasks, K, V], or null: zeros) into `S`
/// [K, V_pad] (padded lanes zero).
inline void load_state(const float* initial, int64_t task, int64_t K, int64_t V, int64_t Vp,
                       float* S) {
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = 0; j < Vp; ++j) {
      S[i * Vp + j] = (initial != nullptr && j < V) ? initial[(task * K + i) * V + j] : 0.0f;
    }
  }
}

/// `S` [K, V_pad] into the [K, V] block of `task` in `out` [tasks, K, V].
inline void store_state(const float* S, int64_t task, int64_t K, int64_t V, int64_t Vp,
                        float* out) {
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = 0; j < V; ++j) out[(task * K + i) * V + j] = S[i * Vp + j];
  }
}

/// Fill the state-contract fields of a kernel's `args` (`initial`, `final_state`, `events`)
/// from the op's arguments; returns the float32 initial state the kernel reads (keep it alive
/// for the call).
template <class Args>
at::Tensor bind_state(Args& args, int64_t batch, const std::vector<int64_t>& state_shape,
                      const std::optional<at::Tensor>& initial_state,
                      const std::optional<at::Tensor>& final_state,
                      const std::optional<at::Tensor>& emit_times,
                      const std::optional<at::Tensor>& emit_slots,
                      const std::optional<at::Tensor>& states,
                      const std::optional<at::Tensor>& inject_times,
                      const std::optional<at::Tensor>& inject_slots,
                      const std::optional<at::Tensor>& inject_value,
                      const std::optional<at::Tensor>& inject_scale, bool inject_set) {
  at::Tensor initial;
  if (initial_state) {
    initial = float32(*initial_state);
    checked_state_output(initial, batch, state_shape);
    args.initial = initial.data_ptr<float>();
  }
  if (final_state) args.final_state = checked_state_output(*final_state, batch, state_shape);
  args.events = RowEvents::of(batch, state_shape, emit_times, emit_slots, states, inject_times,
                              inject_slots, inject_value, inject_scale, inject_set);
  return initial;
}

/// Run `Kernel::head<W, NV, INSTR>(a, task, buffers)` for tasks [begin, end): NV, the vectors
/// per state row, as a compile-time 1, 2, 4 or 8 (0: any other count, read at run time) and
/// INSTR whether the call emits or injects anything.
template <class Kernel, int W>
STATETAP_INLINE void heads(const typename Kernel::Args& a, int64_t begin, int64_t end,
                           int64_t vectors, float* buffers) {
  for (int64_t task = begin; task < end; ++task) {
    const bool instr = a.events.any;
    switch (vectors) {
      case 1:
        instr ? Kernel::template head<W, 1, true>(a, task, buffers)
              : Kernel::template head<W, 1, false>(a, task, buffers);
        break;
      case 2:
        instr ? Kernel::template head<W, 2, true>(a, task, buffers)
              : Kernel::template head<W, 2, false>(a, task, buffers);
        break;
      case 4:
        instr ? Kernel::template head<W, 4, true>(a, task, buffers)
              : Kernel::template head<W, 4, false>(a, task, buffers);
        break;
      case 8:
        instr ? Kernel::template head<W, 8, true>(a, task, buffers)
              : Kernel::template head<W, 8, false>(a, task, buffers);
        break;
      default:
        instr ? Kernel::template head<W, 0, true>(a, task, buffers)
              : Kernel::template head<W, 0, false>(a, task, buffers);
    }
  }
}

}  // namespace statetap::wkv
