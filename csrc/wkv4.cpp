// RWKV-4 WKV on the CPU (torch.ops.statetap.wkv4), in the stable (aa, bb, pp) form of
// kernels/wkv4/reference.py.
//
// One task per (batch b, block of 64 channels), tasks split over threads.  A task keeps its
// block of the state S = (aa, bb, pp) [3, 64] in memory (L1) and walks t = 0 .. L-1, vectorised
// over the channels:
//
//     q = max(pp, u + k);   y = (e^{pp-q} aa + e^{u+k-q} v) / (e^{pp-q} bb + e^{u+k-q})
//     q = max(pp + w, k);   aa <- e^{pp+w-q} aa + e^{k-q} v;   bb <- e^{pp+w-q} bb + e^{k-q};
//     pp <- q
//
// Of each pair of exponentials one is e^0 = 1, so each pair costs one exp: e^{-|x - z|}.
// Instrumentation is a template flag, as in wkv6.cpp.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "dispatch.h"
#include "instrumentation.h"
#include "isa.h"
#include "simd.h"
#include "wkv.h"

namespace statetap {
namespace {

using simd::F;

constexpr int64_t kBlock = 64;  // channels per task: a multiple of every vector width

/// (e^{x - max(x, z)}, e^{z - max(x, z)}) with one exp: the larger side is exactly 1.
template <int W>
STATETAP_INLINE void exp_pair(F<W> x, F<W> z, F<W>& ex, F<W>& ez) {
  const F<W> d = x - z, e = simd::exp<W>(-simd::abs<W>(d)), one = simd::broadcast<W>(1.0f);
  ex = simd::select<W>(d >= 0.0f, one, e);
  ez = simd::select<W>(d >= 0.0f, e, one);
}

struct Wkv4 {
  struct Args {
    int64_t channels, length;  // C, L
    const float* w;            // [C_pad] log-decay (zero padding)
    const float* u;            // [C_pad]
    FloatRows k, v;            // [B, L, C]
    const float* initial;      // [B, 3, C] (always given: the empty state is (0, 0, -1e38))
    float* final_state;        // [B, 3, C] or null (may be `initial`: in place)
    RowEvents events;
    OutputRows y;  // [B, L, C]
  };

  template <int W>
  static STATETAP_INLINE void rows(const Args& a, int64_t begin, int64_t end) {
    // the block's state rows aa, bb, pp [3, kBlock], then k, v and y [kBlock]
    std::vector<float> buffers(6 * kBlock);
    for (int64_t task = begin; task < end; ++task) {
      if (a.events.any) {
        block<W, true>(a, task, buffers.data());
      } else {
        block<W, false>(a, task, buffers.data());
      }
    }
  }

  /// Task = b * blocks + block.
  template <int W, bool INSTR>
  static STATETAP_INLINE void block(const Args& a, int64_t task, float* buffers) {
    const int64_t C = a.channels, L = a.length, blocks = (C + kBlock - 1) / kBlock;
    const int64_t b = task / blocks, c0 = task % blocks * kBlock, n = std::min(kBlock, C - c0);
    float *aa = buffers, *bb = aa + kBlock, *pp = bb + kBlock, *k = pp + kBlock, *v = k + kBlock;
    float* y = v + kBlock;
    for (int64_t row = 0; row < 3; ++row) {
      for (int64_t i = 0; i < kBlock; ++i) {
        buffers[row * kBlock + i] =
            i < n ? a.initial[(b * 3 + row) * C + c0 + i] : (row == 2 ? -1e38f : 0.0f);
      }
    }
    RowCursor cursor = a.events.cursor<INSTR>(b);
    // the tokens [t0, t1)
    auto steps = [&](int64_t t0, int64_t t1) STATETAP_INLINE_LAMBDA {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t at = (b * L + t) * C + c0;
        if (t + wkv::kPrefetchAhead < L) {
          a.k.prefetch(at + wkv::kPrefetchAhead * C, n);
          a.v.prefetch(at + wkv::kPrefetchAhead * C, n);
        }
        const float* k_row = wkv::padded_row(a.k, at, n, kBlock, k);
        const float* v_row = wkv::padded_row(a.v, at, n, kBlock, v);
        for (int64_t i = 0; i < kBlock; i += W) {
          const F<W> kt = simd::load<W>(k_row + i), vt = simd::load<W>(v_row + i);
          const F<W> bonus = simd::load<W>(a.u + c0 + i) + kt;
          F<W> s_aa = simd::load<W>(aa + i), s_bb = simd::load<W>(bb + i),
               s_pp = simd::load<W>(pp + i), old, fresh;
          exp_pair<W>(s_pp, bonus, old, fresh);
          simd::store<W>(y + i, (old * s_aa + fresh * vt) / (old * s_bb + fresh));
          const F<W> decayed = s_pp + simd::load<W>(a.w + c0 + i);
          exp_pair<W>(decayed, kt, old, fresh);
          simd::store<W>(aa + i, old * s_aa + fresh * vt);
          simd::store<W>(bb + i, old * s_bb + fresh);
          simd::store<W>(pp + i, simd::max<W>(decayed, kt));
        }
        a.y.write(at, n, y);
      }
    };
    walk<INSTR>(cursor, L, steps,
                [&](int64_t t) { a.events.apply(cursor, t, b, c0, n, aa, 3, kBlock, C); });
    if (a.final_state != nullptr) {
      for (int64_t row = 0; row < 3; ++row) {
        for (int64_t i = 0; i < n; ++i) {
          a.final_state[(b * 3 + row) * C + c0 + i] = buffers[row * kBlock + i];
        }
      }
    }
  }
};

/// [C] float tensor -> float32 [C_pad], zero padded.
at::Tensor padded_channels(const at::Tensor& t, int64_t padded) {
  at::Tensor out = at::zeros({padded}, t.options().dtype(at::kFloat));
  out.narrow(0, 0, t.size(0)).copy_(t);
  return out;
}

void wkv4(const at::Tensor& w, const at::Tensor& u, const at::Tensor& k, const at::Tensor& v,
          const at::Tensor& initial_state, const at::Tensor& y,
          const std::optional<at::Tensor>& final_state,
          const std::optional<at::Tensor>& emit_times, const std::optional<at::Tensor>& emit_slots,
          const std::optional<at::Tensor>& states, const std::optional<at::Tensor>& inject_times,
          const std::optional<at::Tensor>& inject_slots,
          const std::optional<at::Tensor>& inject_value,
          const std::optional<at::Tensor>& inject_scale, bool inject_set) {
  TORCH_CHECK_VALUE(k.dim() == 3, "k must be [B, L, C]");
  const int64_t batch = k.size(0), length = k.size(1), channels = k.size(2);
  TORCH_CHECK_VALUE(v.sizes() == k.sizes(), "v must be [B, L, C] like k");
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == channels, "w must be [C]");
  TORCH_CHECK_VALUE(u.dim() == 1 && u.size(0) == channels, "u must be [C]");
  TORCH_CHECK_VALUE(y.sizes() == k.sizes() && y.is_contiguous(), "y must be contiguous [B, L, C]");
  check_input_dtype("k", k);
  check_input_dtype("v", v);
  check_input_dtype("y", y);

  const Isa isa = current_isa();
  const int64_t blocks = (channels + kBlock - 1) / kBlock, padded = blocks * kBlock;
  at::Tensor w_p = padded_channels(w, padded), u_p = padded_channels(u, padded);
  at::Tensor k_c = k.contiguous(), v_c = v.contiguous();
  const std::vector<int64_t> state_shape{3, channels};
  Wkv4::Args args{};
  args.channels = channels;
  args.length = length;
  args.w = w_p.data_ptr<float>();
  args.u = u_p.data_ptr<float>();
  args.k = FloatRows(k_c);
  args.v = FloatRows(v_c);
  const at::Tensor initial =
      wkv::bind_state(args, batch, state_shape, initial_state, final_state, emit_times,
                      emit_slots, states, inject_times, inject_slots, inject_value, inject_scale,
                      inject_set);
  args.y = OutputRows(y);
  parallel_rows<Wkv4>(isa, args, batch * blocks, length * kBlock);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(statetap, m) {
  m.def(
      "wkv4(Tensor w, Tensor u, Tensor k, Tensor v, Tensor initial_state, Tensor(a!) y, "
      "Tensor(b!)? final_state, Tensor? emit_times, Tensor? emit_slots, Tensor(c!)? states, "
      "Tensor? inject_times, Tensor? inject_slots, Tensor? inject_value, Tensor? inject_scale, "
      "bool inject_set) -> ()");
}

TORCH_LIBRARY_IMPL(statetap, CPU, m) { m.impl("wkv4", &wkv4); }

}  // namespace statetap
