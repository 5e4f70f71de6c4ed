// Mamba-2 SSD on the CPU (torch.ops.statetap.ssd) and its decode step (ssd_step), in the
// recurrent form: one row per (batch b, head h, block of up to kBlockP head channels), rows
// split over threads.  The row's state S[p, :] (N floats each, padded to whole vectors) stays in
// L1 while it walks t = 0 .. L-1 with one decay per head and token:
//
//     S[p] = exp(dt_t A_h) S[p] + dt_t x_t[p] B_t;   y_t[p] = S[p] . C_t
//
// i.e. per state element one multiply and two FMAs (four rows at a time share the B_t and C_t
// loads).  dt = clamp(softplus(dt + bias)) is computed
// for the whole row first, y = (y + D x) silu(z) after, both vectorised.  Where seq_idx changes
// the state is zeroed before the token.  Instrumentation is a template flag, as in
// selective_scan.cpp.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "dispatch.h"
#include "instrumentation.h"
#include "isa.h"
#include "mamba.h"
#include "simd.h"

namespace statetap {
namespace {

using simd::F;

constexpr int64_t kBlockP = 16;  // head channels per row

struct Ssd {
  struct Args {
    int64_t length, heads, head_dim, n, padded, groups, blocks;  // blocks: row blocks per head
    FloatRows x, z;       // [B, L, H, P]
    FloatRows dt;         // [B, L, H]
    bool has_z;
    const float* A;       // [H]
    const float* B;       // [B, L, G, N_pad]
    const float* C;
    const float* skip;    // [H, P] or null
    const float* bias;    // [H] or null
    TimeStep step;
    const bool* reset;    // [B, L] or null: state zeroed before token t
    const float* initial;  // [B, H, P, N] or null
    float* final_state;    // [B, H, P, N] or null
    RowEvents events;
    OutputRows y;  // [B, L, H, P]
  };

  template <int W>
  static STATETAP_INLINE void rows(const Args& a, int64_t begin, int64_t end) {
    const int64_t L = a.length;
    // dt row, x / z / y blocks [L, kBlockP], the state block [kBlockP, N_pad]
    std::vector<float> buffers(L + 3 * L * kBlockP + kBlockP * a.padded);
    for (int64_t r = begin; r < end; ++r) {
      if (a.events.any) {
        row<W, true>(a, r, buffers.data());
      } else {
        row<W, false>(a, r, buffers.data());
      }
    }
  }

  /// One token for R state rows S[r] (stride NP): S[r] = decay S[r] + dt x[r] B_t,
  /// y[r] = S[r] . C_t; the B_t and C_t vectors are loaded once for the R rows.
  template <int W, int R>
  static STATETAP_INLINE void update(float* S, int64_t NP, int64_t nv, F<W> decay, float dt,
                                     const float* x, const float* Bt, const float* Ct, float* y) {
    F<W> drive[R], acc[R];
    for (int r = 0; r < R; ++r) {
      drive[r] = simd::broadcast<W>(dt * x[r]);
      acc[r] = F<W>{};
    }
    for (int64_t v = 0; v < nv; ++v) {
      const F<W> Bv = simd::load<W>(Bt + v * W), Cv = simd::load<W>(Ct + v * W);
      for (int r = 0; r < R; ++r) {
        float* at = S + r * NP + v * W;
        const F<W> s = decay * simd::load<W>(at) + drive[r] * Bv;
        simd::store<W>(at, s);
        acc[r] = acc[r] + s * Cv;
      }
    }
    for (int r = 0; r < R; ++r) y[r] = simd::hsum<W>(acc[r]);
  }

  template <int W, bool INSTR>
  static STATETAP_INLINE void row(const Args& a, int64_t r, float* buffers) {
    const int64_t L = a.length, H = a.heads, P = a.head_dim, N = a.n, NP = a.padded;
    const int64_t nv = NP / W;
    const int64_t b = r / (H * a.blocks), h = (r / a.blocks) % H;
    const int64_t p0 = (r % a.blocks) * kBlockP, pn = std::min(kBlockP, P - p0);
    const int64_t g = h / (H / a.groups);
    float *dt = buffers, *x = dt + L, *z = x + L * kBlockP, *y = z + L * kBlockP;
    float* S = y + L * kBlockP;

    for (int64_t t = 0; t < L; ++t) dt[t] = a.dt.row((b * L + t) * H + h, 1, dt + t)[0];
    a.step.row<W>(dt, L, a.bias ? a.bias[h] : 0.0f, dt);
    for (int64_t t = 0; t < L; ++t) {
      const int64_t at = ((b * L + t) * H + h) * P + p0;
      const float* xt = a.x.row(at, pn, x + t * kBlockP);
      if (xt != x + t * kBlockP) std::copy(xt, xt + pn, x + t * kBlockP);
      if (a.has_z) {
        const float* zt = a.z.row(at, pn, z + t * kBlockP);
        if (zt != z + t * kBlockP) std::copy(zt, zt + pn, z + t * kBlockP);
      }
    }
    for (int64_t p = 0; p < pn; ++p) {
      const float* from = a.initial ? a.initial + ((b * H + h) * P + p0 + p) * N : nullptr;
      for (int64_t i = 0; i < NP; ++i) S[p * NP + i] = (from && i < N) ? from[i] : 0.0f;
    }
    RowCursor cursor = a.events.cursor<INSTR>(b);
    const float A = a.A[h];

    // the steps [t0, t1)
    auto steps = [&](int64_t t0, int64_t t1) STATETAP_INLINE_LAMBDA {
      for (int64_t t = t0; t < t1; ++t) {
        if (a.reset != nullptr && a.reset[b * L + t]) std::fill(S, S + pn * NP, 0.0f);
        const float* Bt = a.B + ((b * L + t) * a.groups + g) * NP;
        const float* Ct = a.C + ((b * L + t) * a.groups + g) * NP;
        const F<W> decay = simd::exp<W>(simd::broadcast<W>(dt[t] * A));
        int64_t p = 0;
        for (; p + 4 <= pn; p += 4) {
          update<W, 4>(S + p * NP, NP, nv, decay, dt[t], x + t * kBlockP + p, Bt, Ct,
                       y + t * kBlockP + p);
        }
        for (; p < pn; ++p) {
          update<W, 1>(S + p * NP, NP, nv, decay, dt[t], x + t * kBlockP + p, Bt, Ct,
                       y + t * kBlockP + p);
        }
      }
    };
    walk<INSTR>(cursor, L, steps, [&](int64_t t) {
      a.events.apply(cursor, t, b, (h * P + p0) * N, N, S, pn, NP);
    });
    if (a.final_state != nullptr) {
      for (int64_t p = 0; p < pn; ++p) {
        std::copy(S + p * NP, S + p * NP + N, a.final_state + ((b * H + h) * P + p0 + p) * N);
      }
    }
    for (int64_t t = 0; t < L; ++t) {
      float* yt = y + t * kBlockP;
      gated_output<W>(yt, x + t * kBlockP, a.skip ? a.skip + h * P + p0 : nullptr, pn,
                      a.has_z ? z + t * kBlockP : nullptr, pn);
      a.y.write(((b * L + t) * H + h) * P + p0, pn, yt);
    }
  }
};

/// [.., N] float tensor -> contiguous float32 [.., N_pad], zero padding.
at::Tensor padded(const at::Tensor& t, int64_t n_padded) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  const int64_t n = shape.back();
  shape.back() = n_padded;
  at::Tensor out = at::zeros(shape, t.options().dtype(at::kFloat));
  out.narrow(-1, 0, n).copy_(t);
  return out;
}

/// D [H] or [H, P] as contiguous float32 [H, P].
at::Tensor per_channel(const at::Tensor& D, int64_t heads, int64_t head_dim) {
  return float32(D.dim() == 1 ? D.unsqueeze(1).expand({heads, head_dim}) : D);
}

void ssd(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
         const at::Tensor& C, const std::optional<at::Tensor>& D,
         const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& dt_bias,
         bool dt_softplus, bool dt_limited, double dt_low, double dt_high,
         const std::optional<at::Tensor>& reset, const std::optional<at::Tensor>& initial_state,
         const at::Tensor& y, const std::optional<at::Tensor>& final_state,
         const std::optional<at::Tensor>& emit_times, const std::optional<at::Tensor>& emit_slots,
         const std::optional<at::Tensor>& states, const std::optional<at::Tensor>& inject_times,
         const std::optional<at::Tensor>& inject_slots,
         const std::optional<at::Tensor>& inject_value,
         const std::optional<at::Tensor>& inject_scale, bool inject_set) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be [B, L, H, P]");
  const int64_t batch = x.size(0), length = x.size(1), heads = x.size(2), head_dim = x.size(3);
  TORCH_CHECK_VALUE(dt.dim() == 3 && dt.size(0) == batch && dt.size(1) == length &&
                        dt.size(2) == heads,
                    "dt must be [B, L, H]");
  TORCH_CHECK_VALUE(A.numel() == heads, "A must be [H]");
  TORCH_CHECK_VALUE(B.dim() == 4 && B.size(0) == batch && B.size(1) == length &&
                        heads % B.size(2) == 0 && C.sizes() == B.sizes(),
                    "B and C must be [B, L, G, N] with G dividing H");
  TORCH_CHECK_VALUE(y.sizes() == x.sizes() && y.is_contiguous(), "y must be contiguous like x");
  check_input_dtype("x", x);
  check_input_dtype("dt", dt);
  check_input_dtype("y", y);
  const int64_t groups = B.size(2), n = B.size(3);
  const Isa isa = current_isa();
  const int64_t width = isa_width(isa), n_padded = (n + width - 1) / width * width;

  at::Tensor x_c = x.contiguous(), dt_c = dt.contiguous(), A_c = float32(A);
  at::Tensor B_p = padded(B, n_padded), C_p = padded(C, n_padded);
  at::Tensor z_c, skip, bias, reset_c, initial;
  Ssd::Args args{};
  args.length = length;
  args.heads = heads;
  args.head_dim = head_dim;
  args.n = n;
  args.padded = n_padded;
  args.groups = groups;
  args.blocks = (head_dim + kBlockP - 1) / kBlockP;
  args.x = FloatRows(x_c);
  args.dt = FloatRows(dt_c);
  args.has_z = z.has_value();
  if (z) {
    TORCH_CHECK_VALUE(z->sizes() == x.sizes(), "z must be [B, L, H, P] like x");
    check_input_dtype("z", *z);
    z_c = z->contiguous();
    args.z = FloatRows(z_c);
  }
  args.A = A_c.data_ptr<float>();
  args.B = B_p.data_ptr<float>();
  args.C = C_p.data_ptr<float>();
  if (D) {
    skip = per_channel(*D, heads, head_dim);
    args.skip = skip.data_ptr<float>();
  }
  if (dt_bias) {
    TORCH_CHECK_VALUE(dt_bias->numel() == heads, "dt_bias must be [H]");
    bias = float32(*dt_bias);
    args.bias = bias.data_ptr<float>();
  }
  args.step = TimeStep{dt_softplus, dt_limited, static_cast<float>(dt_low),
                       static_cast<float>(dt_high)};
  if (reset) {
    TORCH_CHECK_VALUE(reset->scalar_type() == at::kBool && reset->numel() == batch * length,
                      "reset must be bool [B, L]");
    reset_c = reset->contiguous();
    args.reset = reset_c.data_ptr<bool>();
  }
  const std::vector<int64_t> state_shape{heads, head_dim, n};
  if (initial_state) {
    TORCH_CHECK_VALUE(initial_state->numel() == batch * heads * head_dim * n,
                      "initial_state must be [B, H, P, N]");
    initial = float32(*initial_state);
    args.initial = initial.data_ptr<float>();
  }
  if (final_state) args.final_state = checked_state_output(*final_state, batch, state_shape);
  args.events = RowEvents::of(batch, state_shape, emit_times, emit_slots, states, inject_times,
                              inject_slots, inject_value, inject_scale, inject_set);
  args.y = OutputRows(y);
  parallel_rows<Ssd>(isa, args, batch * heads * args.blocks, length * kBlockP * n);
}

void ssd_step(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
              const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
              const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
              const std::optional<at::Tensor>& dt_bias, bool dt_softplus, bool dt_limited,
              double dt_low, double dt_high, const std::optional<at::Tensor>& inject_value,
              const std::optional<at::Tensor>& inject_scale, bool inject_set,
              const at::Tensor& y, const std::optional<at::Tensor>& emit) {
  TORCH_CHECK_VALUE(state.dim() == 4, "state must be [B, H, P, N]");
  const int64_t batch = state.size(0), heads = state.size(1), head_dim = state.size(2);
  TORCH_CHECK_VALUE(dt.dim() == 2 && dt.size(0) == batch && dt.size(1) == heads,
                    "dt must be [B, H]");
  TORCH_CHECK_VALUE(A.numel() == heads, "A must be [H]");
  auto per_head = [&](const at::Tensor& t) {  // [.., H] -> [.., H, P], stride 0 over P
    std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
    shape.push_back(head_dim);
    return t.unsqueeze(-1).expand(shape);
  };
  std::optional<at::Tensor> skip, bias;
  if (D) skip = per_channel(*D, heads, head_dim);
  if (dt_bias) bias = per_head(dt_bias->reshape({heads}));
  mamba_state_update(state, x, per_head(dt), per_head(A.reshape({heads})), B, C, skip, z, bias,
                     dt_softplus, dt_limited, dt_low, dt_high, inject_value, inject_scale,
                     inject_set, y, emit);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(statetap, m) {
  m.def(
      "ssd(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
      "Tensor? dt_bias, bool dt_softplus, bool dt_limited, float dt_low, float dt_high, "
      "Tensor? reset, Tensor? initial_state, Tensor(a!) y, Tensor(b!)? final_state, "
      "Tensor? emit_times, Tensor? emit_slots, Tensor(c!)? states, Tensor? inject_times, "
      "Tensor? inject_slots, Tensor? inject_value, Tensor? inject_scale, bool inject_set) -> ()");
  m.def(
      "ssd_step(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D, "
      "Tensor? z, Tensor? dt_bias, bool dt_softplus, bool dt_limited, float dt_low, "
      "float dt_high, Tensor? inject_value, Tensor? inject_scale, bool inject_set, "
      "Tensor(b!) y, Tensor(c!)? emit) -> ()");
}

TORCH_LIBRARY_IMPL(statetap, CPU, m) {
  m.impl("ssd", &ssd);
  m.impl("ssd_step", &ssd_step);
}

}  // namespace statetap
