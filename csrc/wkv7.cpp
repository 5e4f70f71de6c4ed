// RWKV-7 WKV (generalised delta rule) on the CPU (torch.ops.statetap.wkv7).
//
// One task per (batch b, head h), tasks split over threads.  A task keeps its state S [K, V]
// (float32, V padded to whole vectors; 16 KiB at K = V = 64, in L1) and walks t = 0 .. L-1 with
// one pass over S per token:
//
//     removed = a_t^T S;   S <- diag(e^{w_t}) S + b_t removed^T + k_t v_t^T;   y_t = S^T (scale r_t)
//
// where the pass that writes S_t also accumulates y_t and a_{t+1}^T S_t, the next token's
// `removed` (recomputed after an injection changes S_t); the V loop vectorised, `removed` and y
// in registers.  Instrumentation is a
// template flag, as in wkv6.cpp: outputs are bit-identical with and without empty arguments.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <utility>
#include <vector>

#include "dispatch.h"
#include "instrumentation.h"
#include "isa.h"
#include "simd.h"
#include "wkv.h"

namespace statetap {
namespace {

using simd::F;

struct Wkv7 {
  struct Args : wkv::MatrixDims {
    FloatRows r, w, k, v, a, b;  // [B, L, H, K] (v: [B, L, H, V])
    float scale;
    const float* initial;  // [B, H, K, V] or null
    float* final_state;    // [B, H, K, V] or null (may be `initial`: in place)
    RowEvents events;
    OutputRows y;  // [B, L, H, V]
  };

  template <int W>
  static STATETAP_INLINE void rows(const Args& a, int64_t begin, int64_t end) {
    // S [K, V_pad], the token's r, w, e^w, k, a, b and the next a rows [K_pad], v and y
    // [V_pad], then (aligned for vectors) a^T S, the next a^T S and y accumulators [V_pad]
    std::vector<float> buffers(a.key_dim * a.value_pad + 7 * a.key_pad + 5 * a.value_pad + 16);
    wkv::heads<Wkv7, W>(a, begin, end, a.value_pad / W, buffers.data());
  }

  /// removed[j] = sum_i key[i] S[i, j] (a^T S, [V_pad]), over the NV (or nv) vectors of a row.
  template <int W, int NV>
  static STATETAP_INLINE void project(const float* S, const float* key, int64_t K, int64_t Vp,
                                      F<W>* removed) {
    const int64_t nv = NV > 0 ? NV : Vp / W;
    for (int64_t j = 0; j < nv; ++j) removed[j] = F<W>{};
    for (int64_t i = 0; i < K; ++i) {
      const F<W> ai = simd::broadcast<W>(key[i]);
      for (int64_t j = 0; j < nv; ++j) removed[j] = removed[j] + ai * simd::load<W>(S + i * Vp + j * W);
    }
  }

  /// Task = b * H + h; NV vectors per state row (0: value_pad / W, read at run time).  One pass
  /// over S per token: it updates S, accumulates y_t and, for the next token, a_{t+1}^T S_t.
  template <int W, int NV, bool INSTR>
  static STATETAP_INLINE void head(const Args& a, int64_t task, float* buffers) {
    const int64_t H = a.heads, L = a.length, K = a.key_dim, V = a.value_dim;
    const int64_t Kp = a.key_pad, Vp = a.value_pad, nv = NV > 0 ? NV : Vp / W;
    const int64_t b = task / H, h = task % H;
    constexpr int64_t kRegs = NV > 0 ? NV : 1;
    float *S = buffers, *r = S + K * Vp, *w = r + Kp, *decay = w + Kp, *k = decay + Kp;
    float *ka = k + Kp, *kb = ka + Kp, *ka_next = kb + Kp, *v = ka_next + Kp, *y = v + Vp;
    // a^T S and y: registers when NV is known, else [V_pad] vectors in memory
    F<W> removed_regs[kRegs], next_regs[kRegs], acc_regs[kRegs];
    F<W>* vectors = reinterpret_cast<F<W>*>((reinterpret_cast<uintptr_t>(y + Vp) + 63) & ~uintptr_t{63});
    F<W>* removed = NV > 0 ? removed_regs : vectors;
    F<W>* next = NV > 0 ? next_regs : vectors + nv;
    F<W>* acc = NV > 0 ? acc_regs : vectors + 2 * nv;
    auto at = [&](int64_t t) { return ((b * L + t) * H + h) * K; };

    wkv::load_state(a.initial, task, K, V, Vp, S);
    RowCursor cursor = a.events.cursor<INSTR>(b);
    if (L > 0) {
      wkv::load_padded(a.a, at(0), K, Kp, ka);
      project<W, NV>(S, ka, K, Vp, removed);
    }
    // the tokens [t0, t1); after token t, `removed` = a_{t+1}^T S_t and ka = a_{t+1}
    auto steps = [&](int64_t t0, int64_t t1) STATETAP_INLINE_LAMBDA {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t key_at = at(t), value_at = ((b * L + t) * H + h) * V;
        wkv::prefetch_ahead({&a.r, &a.w, &a.k, &a.a, &a.b}, a.v, t, key_at, value_at, a);
        const float* r_row = wkv::padded_row(a.r, key_at, K, Kp, r);
        wkv::exp_row<W>(wkv::padded_row(a.w, key_at, K, Kp, w), Kp, decay);
        const float* k_row = wkv::padded_row(a.k, key_at, K, Kp, k);
        const float* b_row = wkv::padded_row(a.b, key_at, K, Kp, kb);
        const float* v_row = wkv::padded_row(a.v, value_at, V, Vp, v);
        if (t + 1 < L) {
          wkv::load_padded(a.a, at(t + 1), K, Kp, ka_next);
        } else {
          for (int64_t i = 0; i < Kp; ++i) ka_next[i] = 0.0f;
        }
        for (int64_t j = 0; j < nv; ++j) acc[j] = next[j] = F<W>{};
        // S_t = diag(e^w) S_{t-1} + b removed^T + k v^T;  y = S_t^T (scale r);
        // next = a_{t+1}^T S_t
        for (int64_t i = 0; i < K; ++i) {
          const F<W> di = simd::broadcast<W>(decay[i]), bi = simd::broadcast<W>(b_row[i]),
                     ki = simd::broadcast<W>(k_row[i]), ri = simd::broadcast<W>(r_row[i] * a.scale),
                     ni = simd::broadcast<W>(ka_next[i]);
          float* __restrict row = S + i * Vp;
          for (int64_t j = 0; j < nv; ++j) {
            const F<W> s = di * simd::load<W>(row + j * W) + bi * removed[j] +
                           ki * simd::load<W>(v_row + j * W);
            simd::store<W>(row + j * W, s);
            acc[j] = acc[j] + ri * s;
            next[j] = next[j] + ni * s;
          }
        }
        for (int64_t j = 0; j < nv; ++j) simd::store<W>(y + j * W, acc[j]);
        a.y.write(value_at, V, y);
        for (int64_t j = 0; j < nv; ++j) removed[j] = next[j];
        std::swap(ka, ka_next);
      }
    };
    walk<INSTR>(cursor, L, steps, [&](int64_t t) {
      const bool injects = t == cursor.inject_next;
      a.events.apply(cursor, t, b, h * K * V, V, S, K, Vp);
      if (injects && t + 1 < L) project<W, NV>(S, ka, K, Vp, removed);  // S_t changed
    });
    if (a.final_state != nullptr) wkv::store_state(S, task, K, V, Vp, a.final_state);
  }
};

void wkv7(const at::Tensor& r, const at::Tensor& w, const at::Tensor& k, const at::Tensor& v,
          const at::Tensor& a, const at::Tensor& b, double scale,
          const std::optional<at::Tensor>& initial_state, const at::Tensor& y,
          const std::optional<at::Tensor>& final_state,
          const std::optional<at::Tensor>& emit_times, const std::optional<at::Tensor>& emit_slots,
          const std::optional<at::Tensor>& states, const std::optional<at::Tensor>& inject_times,
          const std::optional<at::Tensor>& inject_slots,
          const std::optional<at::Tensor>& inject_value,
          const std::optional<at::Tensor>& inject_scale, bool inject_set) {
  TORCH_CHECK_VALUE(r.dim() == 4, "r must be [B, L, H, K]");
  const int64_t batch = r.size(0), length = r.size(1), heads = r.size(2), key_dim = r.size(3);
  for (auto [name, t] : {std::pair{"w", &w}, {"k", &k}, {"a", &a}, {"b", &b}}) {
    TORCH_CHECK_VALUE(t->sizes() == r.sizes(), name, " must be [B, L, H, K] like r");
  }
  TORCH_CHECK_VALUE(v.dim() == 4 && v.size(0) == batch && v.size(1) == length &&
                        v.size(2) == heads,
                    "v must be [B, L, H, V]");
  const int64_t value_dim = v.size(3);
  TORCH_CHECK_VALUE(y.sizes() == v.sizes() && y.is_contiguous(), "y must be contiguous [B, L, H, V]");
  const std::vector<at::Tensor> inputs{r.contiguous(), w.contiguous(), k.contiguous(),
                                       v.contiguous(), a.contiguous(), b.contiguous()};
  const char* names[] = {"r", "w", "k", "v", "a", "b"};
  for (int i = 0; i < 6; ++i) check_input_dtype(names[i], inputs[i]);
  check_input_dtype("y", y);

  const Isa isa = current_isa();
  const int64_t width = isa_width(isa);
  Wkv7::Args args{};
  static_cast<wkv::MatrixDims&>(args) = wkv::MatrixDims::of(r, v, width);
  args.r = FloatRows(inputs[0]);
  args.w = FloatRows(inputs[1]);
  args.k = FloatRows(inputs[2]);
  args.v = FloatRows(inputs[3]);
  args.a = FloatRows(inputs[4]);
  args.b = FloatRows(inputs[5]);
  args.scale = static_cast<float>(scale);
  const std::vector<int64_t> state_shape{heads, key_dim, value_dim};
  const at::Tensor initial =
      wkv::bind_state(args, batch, state_shape, initial_state, final_state, emit_times,
                      emit_slots, states, inject_times, inject_slots, inject_value, inject_scale,
                      inject_set);
  args.y = OutputRows(y);
  parallel_rows<Wkv7>(isa, args, batch * heads, length * key_dim * value_dim);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(statetap, m) {
  m.def(
      "wkv7(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, float scale, "
      "Tensor? initial_state, Tensor(a!) y, Tensor(b!)? final_state, Tensor? emit_times, "
      "Tensor? emit_slots, Tensor(c!)? states, Tensor? inject_times, Tensor? inject_slots, "
      "Tensor? inject_value, Tensor? inject_scale, bool inject_set) -> ()");
}

TORCH_LIBRARY_IMPL(statetap, CPU, m) { m.impl("wkv7", &wkv7); }

}  // namespace statetap
