// RWKV-5/6 WKV on the CPU (torch.ops.statetap.wkv6; RWKV-5 passes its static [H, K] decay).
//
// One task per (batch b, head h), tasks split over threads.  A task keeps its state S [K, V]
// (float32, V padded to whole vectors, 16 KiB at K = V = 64: it stays in L1) and walks
// t = 0 .. L-1 with one pass over S per token:
//
//     y_t = (scale r_t)^T S + ((scale r_t) . (u * k_t)) v_t;   S <- diag(e^{w_t}) S + k_t v_t^T
//
// the V loop vectorised, y accumulated in registers.  Instrumentation (emit/inject per batch
// row, times sorted by Instrumentation.schedule) is a template flag: without it the task is the
// plain recurrence, so outputs are bit-identical with and without empty instrumentation.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

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

struct Wkv6 {
  struct Args : wkv::MatrixDims {
    FloatRows r, k, v, w;  // [B, L, H, K] (v: [B, L, H, V]); w [H, K] when static_decay
    bool static_decay;
    const float* u;  // [H, K]
    float scale;
    const float* initial;  // [B, H, K, V] or null
    float* final_state;    // [B, H, K, V] or null (may be `initial`: in place)
    RowEvents events;
    OutputRows y;  // [B, L, H, V]
  };

  template <int W>
  static STATETAP_INLINE void rows(const Args& a, int64_t begin, int64_t end) {
    // S [K, V_pad], then the token's r (scaled), k, log-decay, decay rows [K_pad], v and y [V_pad]
    std::vector<float> buffers(a.key_dim * a.value_pad + 4 * a.key_pad + 2 * a.value_pad);
    wkv::heads<Wkv6, W>(a, begin, end, a.value_pad / W, buffers.data());
  }

  /// Task = b * H + h; NV vectors per state row (0: value_pad / W, y accumulated in memory).
  template <int W, int NV, bool INSTR>
  static STATETAP_INLINE void head(const Args& a, int64_t task, float* buffers) {
    const int64_t H = a.heads, L = a.length, K = a.key_dim, V = a.value_dim;
    const int64_t Kp = a.key_pad, Vp = a.value_pad, nv = NV > 0 ? NV : Vp / W;
    const int64_t b = task / H, h = task % H;
    float *S = buffers, *r = S + K * Vp, *k = r + Kp, *w = k + Kp, *decay = w + Kp;
    float *v = decay + Kp, *y = v + Vp;
    const float* u = a.u + h * K;

    wkv::load_state(a.initial, task, K, V, Vp, S);
    if (a.static_decay) {
      wkv::load_padded(a.w, h * K, K, Kp, w);
      wkv::exp_row<W>(w, Kp, decay);
    }
    RowCursor cursor = a.events.cursor<INSTR>(b);

    // the tokens [t0, t1)
    auto steps = [&](int64_t t0, int64_t t1) STATETAP_INLINE_LAMBDA {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t key_at = ((b * L + t) * H + h) * K, value_at = ((b * L + t) * H + h) * V;
        wkv::prefetch_ahead({&a.r, &a.k, a.static_decay ? nullptr : &a.w}, a.v, t, key_at,
                            value_at, a);
        const float* rt = wkv::padded_row(a.r, key_at, K, Kp, r);
        const float* kt = wkv::padded_row(a.k, key_at, K, Kp, k);
        const float* vt = wkv::padded_row(a.v, value_at, V, Vp, v);
        if (!a.static_decay) wkv::exp_row<W>(wkv::padded_row(a.w, key_at, K, Kp, w), Kp, decay);
        // r = scale r_t and the bonus (scale r_t) . (u * k_t), vectorised (u is read unpadded,
        // so its tail is scalar)
        const F<W> scale = simd::broadcast<W>(a.scale);
        F<W> bonus_lanes{};
        int64_t i = 0;
        for (; i + W <= K; i += W) {
          const F<W> ri = simd::load<W>(rt + i) * scale;
          simd::store<W>(r + i, ri);
          bonus_lanes = bonus_lanes + ri * simd::load<W>(u + i) * simd::load<W>(kt + i);
        }
        float bonus = simd::hsum<W>(bonus_lanes);
        for (; i < K; ++i) {
          r[i] = rt[i] * a.scale;
          bonus += r[i] * u[i] * kt[i];
        }

        // y and v_t in registers when NV is known (v_t is the same for every row of S)
        F<W> acc[NV > 0 ? NV : 1] = {}, vv[NV > 0 ? NV : 1];
        if constexpr (NV == 0) {
          for (int64_t j = 0; j < Vp; ++j) y[j] = 0.0f;
        } else {
          for (int j = 0; j < NV; ++j) vv[j] = simd::load<W>(vt + j * W);
        }
        for (int64_t i = 0; i < K; ++i) {
          const F<W> ri = simd::broadcast<W>(r[i]), di = simd::broadcast<W>(decay[i]),
                     ki = simd::broadcast<W>(kt[i]);
          float* __restrict row = S + i * Vp;
          for (int64_t j = 0; j < nv; ++j) {
            const F<W> s = simd::load<W>(row + j * W);
            if constexpr (NV > 0) {
              acc[j] = acc[j] + ri * s;
              simd::store<W>(row + j * W, di * s + ki * vv[j]);
            } else {
              simd::store<W>(y + j * W, simd::load<W>(y + j * W) + ri * s);
              simd::store<W>(row + j * W, di * s + ki * simd::load<W>(vt + j * W));
            }
          }
        }
        const F<W> bonus_v = simd::broadcast<W>(bonus);
        for (int64_t j = 0; j < nv; ++j) {
          const F<W> total = NV > 0 ? acc[j] : simd::load<W>(y + j * W);
          simd::store<W>(y + j * W, total + bonus_v * simd::load<W>(vt + j * W));
        }
        a.y.write(value_at, V, y);
      }
    };
    walk<INSTR>(cursor, L, steps,
                [&](int64_t t) { a.events.apply(cursor, t, b, h * K * V, V, S, K, Vp); });
    if (a.final_state != nullptr) wkv::store_state(S, task, K, V, Vp, a.final_state);
  }
};

void wkv6(const at::Tensor& r, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
          const at::Tensor& u, double scale, const std::optional<at::Tensor>& initial_state,
          const at::Tensor& y, const std::optional<at::Tensor>& final_state,
          const std::optional<at::Tensor>& emit_times, const std::optional<at::Tensor>& emit_slots,
          const std::optional<at::Tensor>& states, const std::optional<at::Tensor>& inject_times,
          const std::optional<at::Tensor>& inject_slots,
          const std::optional<at::Tensor>& inject_value,
          const std::optional<at::Tensor>& inject_scale, bool inject_set) {
  TORCH_CHECK_VALUE(r.dim() == 4, "r must be [B, L, H, K]");
  const int64_t batch = r.size(0), length = r.size(1), heads = r.size(2), key_dim = r.size(3);
  TORCH_CHECK_VALUE(k.sizes() == r.sizes(), "k must be [B, L, H, K] like r");
  TORCH_CHECK_VALUE(v.dim() == 4 && v.size(0) == batch && v.size(1) == length &&
                        v.size(2) == heads,
                    "v must be [B, L, H, V]");
  const int64_t value_dim = v.size(3);
  const bool static_decay = w.dim() == 2;
  TORCH_CHECK_VALUE(w.sizes() == r.sizes() || (static_decay && w.size(0) == heads &&
                                                w.size(1) == key_dim),
                    "w must be [B, L, H, K] like r, or a static [H, K]");
  TORCH_CHECK_VALUE(u.dim() == 2 && u.size(0) == heads && u.size(1) == key_dim, "u must be [H, K]");
  TORCH_CHECK_VALUE(y.sizes() == v.sizes() && y.is_contiguous(), "y must be contiguous [B, L, H, V]");
  for (auto [name, t] : {std::pair{"r", &r}, {"k", &k}, {"v", &v}, {"w", &w}, {"y", &y}}) {
    check_input_dtype(name, *t);
  }

  const Isa isa = current_isa();
  const int64_t width = isa_width(isa);
  at::Tensor r_c = r.contiguous(), k_c = k.contiguous(), v_c = v.contiguous(),
             w_c = w.contiguous(), u_c = float32(u);
  Wkv6::Args args{};
  static_cast<wkv::MatrixDims&>(args) = wkv::MatrixDims::of(r, v, width);
  args.r = FloatRows(r_c);
  args.k = FloatRows(k_c);
  args.v = FloatRows(v_c);
  args.w = FloatRows(w_c);
  args.static_decay = static_decay;
  args.u = u_c.data_ptr<float>();
  args.scale = static_cast<float>(scale);
  const std::vector<int64_t> state_shape{heads, key_dim, value_dim};
  const at::Tensor initial =
      wkv::bind_state(args, batch, state_shape, initial_state, final_state, emit_times,
                      emit_slots, states, inject_times, inject_slots, inject_value, inject_scale,
                      inject_set);
  args.y = OutputRows(y);
  parallel_rows<Wkv6>(isa, args, batch * heads, length * key_dim * value_dim);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(statetap, m) {
  m.def(
      "wkv6(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, float scale, "
      "Tensor? initial_state, Tensor(a!) y, Tensor(b!)? final_state, Tensor? emit_times, "
      "Tensor? emit_slots, Tensor(c!)? states, Tensor? inject_times, Tensor? inject_slots, "
      "Tensor? inject_value, Tensor? inject_scale, bool inject_set) -> ()");
}

TORCH_LIBRARY_IMPL(statetap, CPU, m) { m.impl("wkv6", &wkv6); }

}  // namespace statetap
