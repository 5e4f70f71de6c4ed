// Mamba-1 selective scan on the CPU (torch.ops.statetap.selective_scan), its decode step
// (torch.ops.statetap.selective_scan_step) and the state update both Mamba steps share.
//
// Forward: one row per (batch b, channel d), rows split over threads.  A row keeps its state
// S[d, :] (N floats, padded to whole vectors) in registers while it walks t = 0 .. L-1:
//
//     S = 2^(dt_t A log2 e) S + dt_t u_t B_t;   y_t = S . C_t
//
// with dt = softplus(delta + bias) computed for the whole row first and y = (y + D u) silu(z)
// applied after, both vectorised over t.  B and C are transposed once to [B, G, L, N_pad] so the
// per-step loads are contiguous.  Instrumentation (emit/inject per row, times sorted by
// Instrumentation.schedule) is a template flag: the un-instrumented rows are the plain scan.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/repeat_interleave.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <numeric>
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

constexpr double kLog2e = 1.4426950408889634;

struct Scan {
  struct Args {
    int64_t dim, length, n, padded;  // D, L, N, N rounded up to whole vectors
    FloatRows u, delta, z;           // [B, D, L], any strides:
    int64_t u_strides[3], delta_strides[3], z_strides[3];
    bool has_z;
    const float* A;  // [D, N_pad], times log2 e, zero padding
    const float* B;  // [B, G_B, L, N_pad] when varying, else [D, N_pad]
    const float* C;
    bool b_varying, c_varying;
    int64_t b_groups, c_groups;  // G of B and C (1 when shared)
    const float* skip;           // [D] or null
    const float* bias;           // [D] or null
    TimeStep step;
    const float* initial;  // [B, D, N] or null
    float* final_state;    // [B, D, N] or null
    RowEvents events;      // per-row emission and injection schedule
    OutputRows y;          // [B, D, L]
  };

  template <int W>
  static STATETAP_INLINE void rows(const Args& a, int64_t begin, int64_t end) {
    const int64_t L = a.length, nv = a.padded / W;
    // dt, u, z, y rows; the state and A of a row in memory
    std::vector<float> buffers(4 * L + 2 * a.padded);
    for (int64_t r = begin; r < end; ++r) {
      if (a.events.any) {
        dispatch_width<W, true>(a, r, buffers.data(), nv);
      } else {
        dispatch_width<W, false>(a, r, buffers.data(), nv);
      }
    }
  }

  template <int W, bool INSTR>
  static STATETAP_INLINE void dispatch_width(const Args& a, int64_t r, float* buffers,
                                             int64_t nv) {
    switch (nv) {
      case 1:
        row<W, 1, INSTR>(a, r, buffers);
        break;
      case 2:
        row<W, 2, INSTR>(a, r, buffers);
        break;
      case 4:
        row<W, 4, INSTR>(a, r, buffers);
        break;
      default:
        row<W, 0, INSTR>(a, r, buffers);
    }
  }

  /// Row r = b * D + d; NV vectors of state (0: a.padded / W, kept in memory).
  template <int W, int NV, bool INSTR>
  static STATETAP_INLINE void row(const Args& a, int64_t r, float* buffers) {
    const int64_t L = a.length, N = a.n, P = a.padded, D = a.dim;
    const int64_t b = r / D, d = r % D, nv = NV > 0 ? NV : P / W;
    float *dt = buffers, *ubuf = buffers + L, *zbuf = buffers + 2 * L, *y = buffers + 3 * L;
    float *state_mem = buffers + 4 * L, *A_mem = state_mem + P;
    const int64_t base = r * L;  // of the output [B, D, L]
    auto read = [&](const FloatRows& t, const int64_t* s, float* buffer) {
      return t.strided_row(b * s[0] + d * s[1], s[2], L, buffer);
    };

    a.step.row<W>(read(a.delta, a.delta_strides, dt), L, a.bias ? a.bias[d] : 0.0f, dt);
    const float* u = read(a.u, a.u_strides, ubuf);

    for (int64_t n = 0; n < P; ++n) {
      state_mem[n] = (a.initial && n < N) ? a.initial[r * N + n] : 0.0f;
      A_mem[n] = a.A[d * P + n];
    }
    F<W> state[NV > 0 ? NV : 1], A[NV > 0 ? NV : 1];
    if constexpr (NV > 0) {
      for (int v = 0; v < NV; ++v) {
        state[v] = simd::load<W>(state_mem + v * W);
        A[v] = simd::load<W>(A_mem + v * W);
      }
    }

    const float* B_row = a.b_varying ? a.B + (b * a.b_groups + d / (D / a.b_groups)) * L * P
                                     : a.B + d * P;
    const float* C_row = a.c_varying ? a.C + (b * a.c_groups + d / (D / a.c_groups)) * L * P
                                     : a.C + d * P;
    const int64_t b_step = a.b_varying ? P : 0, c_step = a.c_varying ? P : 0;
    // the plain steps [t0, t1): state update and y_t
    auto steps = [&](int64_t t0, int64_t t1) STATETAP_INLINE_LAMBDA {
      const float* Bt = B_row + t0 * b_step;
      const float* Ct = C_row + t0 * c_step;
      for (int64_t t = t0; t < t1; ++t, Bt += b_step, Ct += c_step) {
        const F<W> dtv = simd::broadcast<W>(dt[t]), drive = simd::broadcast<W>(dt[t] * u[t]);
        F<W> acc{};
        for (int64_t v = 0; v < nv; ++v) {
          if constexpr (NV > 0) {
            F<W> s = simd::exp2<W>(dtv * A[v]) * state[v] + drive * simd::load<W>(Bt + v * W);
            state[v] = s;
            acc = acc + s * simd::load<W>(Ct + v * W);
          } else {
            F<W> s = simd::exp2<W>(dtv * simd::load<W>(A_mem + v * W)) *
                         simd::load<W>(state_mem + v * W) +
                     drive * simd::load<W>(Bt + v * W);
            simd::store<W>(state_mem + v * W, s);
            acc = acc + s * simd::load<W>(Ct + v * W);
          }
        }
        y[t] = simd::hsum<W>(acc);
      }
    };

    RowCursor cursor = a.events.cursor<INSTR>(b);
    walk<INSTR>(cursor, L, steps, [&](int64_t t) {
      if constexpr (NV > 0) {
        for (int v = 0; v < NV; ++v) simd::store<W>(state_mem + v * W, state[v]);
      }
      a.events.apply(cursor, t, b, d * N, N, state_mem);
      if constexpr (NV > 0) {
        for (int v = 0; v < NV; ++v) state[v] = simd::load<W>(state_mem + v * W);
      }
    });
    if (a.final_state != nullptr) {
      if constexpr (NV > 0) {
        for (int v = 0; v < NV; ++v) simd::store<W>(state_mem + v * W, state[v]);
      }
      for (int64_t n = 0; n < N; ++n) a.final_state[r * N + n] = state_mem[n];
    }
    gated_output<W>(y, u, a.skip ? a.skip + d : nullptr, 1,
                    a.has_z ? read(a.z, a.z_strides, zbuf) : nullptr, L);
    a.y.write(base, L, y);
  }
};

/// [.., N, ..] float tensor -> [.., N_pad] float32 with zero padding, `dim` moved last.
at::Tensor padded_last(const at::Tensor& t, int64_t dim, int64_t padded, double scale = 1.0) {
  at::Tensor moved = t.movedim(dim, -1);
  std::vector<int64_t> shape(moved.sizes().begin(), moved.sizes().end());
  int64_t n = shape.back();
  shape.back() = padded;
  at::Tensor out = at::zeros(shape, t.options().dtype(at::kFloat));
  at::Tensor body = out.narrow(-1, 0, n);
  body.copy_(moved);
  if (scale != 1.0) body.mul_(scale);
  return out;
}

void selective_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                    const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                    bool delta_softplus, const std::optional<at::Tensor>& initial_state,
                    const at::Tensor& y, const std::optional<at::Tensor>& final_state,
                    const std::optional<at::Tensor>& emit_times,
                    const std::optional<at::Tensor>& emit_slots,
                    const std::optional<at::Tensor>& states,
                    const std::optional<at::Tensor>& inject_times,
                    const std::optional<at::Tensor>& inject_slots,
                    const std::optional<at::Tensor>& inject_value,
                    const std::optional<at::Tensor>& inject_scale, bool inject_set) {
  TORCH_CHECK_VALUE(u.dim() == 3, "u must be [B, D, L]");
  const int64_t batch = u.size(0), dim = u.size(1), length = u.size(2);
  TORCH_CHECK_VALUE(delta.sizes() == u.sizes(), "delta must be [B, D, L] like u");
  TORCH_CHECK_VALUE(A.dim() == 2 && A.size(0) == dim, "A must be [D, N]");
  const int64_t n = A.size(1);
  check_input_dtype("u", u);
  check_input_dtype("delta", delta);
  auto groups = [&](const at::Tensor& t, const char* name) -> int64_t {
    if (t.dim() == 2) {
      TORCH_CHECK_VALUE(t.size(0) == dim && t.size(1) == n, name, " must be [D, N]");
      return 1;
    }
    TORCH_CHECK_VALUE(t.dim() == 4 && t.size(0) == batch && t.size(2) == n &&
                          t.size(3) == length && dim % t.size(1) == 0,
                      name, " must be [D, N] or [B, G, N, L] with G dividing D");
    return t.size(1);
  };
  const int64_t b_groups = groups(B, "B"), c_groups = groups(C, "C");
  TORCH_CHECK_VALUE(y.sizes() == u.sizes() && y.is_contiguous(), "y must be contiguous [B, D, L]");
  check_input_dtype("y", y);

  const Isa isa = current_isa();
  const int64_t width = isa_width(isa), padded = (n + width - 1) / width * width;
  at::Tensor A_p = padded_last(A, 1, padded, kLog2e);
  at::Tensor B_p = padded_last(B, B.dim() == 4 ? 2 : 1, padded);
  at::Tensor C_p = padded_last(C, C.dim() == 4 ? 2 : 1, padded);
  at::Tensor skip, bias, initial;
  auto strides = [](const at::Tensor& t, int64_t* out) {
    for (int i = 0; i < 3; ++i) out[i] = t.stride(i);
  };
  Scan::Args args{};
  args.dim = dim;
  args.length = length;
  args.n = n;
  args.padded = padded;
  args.u = FloatRows(u);  // read in place with its strides (transformers passes transposes)
  args.delta = FloatRows(delta);
  strides(u, args.u_strides);
  strides(delta, args.delta_strides);
  args.has_z = z.has_value();
  if (z) {
    TORCH_CHECK_VALUE(z->sizes() == u.sizes(), "z must be [B, D, L] like u");
    check_input_dtype("z", *z);
    args.z = FloatRows(*z);
    strides(*z, args.z_strides);
  }
  args.A = A_p.data_ptr<float>();
  args.B = B_p.data_ptr<float>();
  args.C = C_p.data_ptr<float>();
  args.b_varying = B.dim() == 4;
  args.c_varying = C.dim() == 4;
  args.b_groups = b_groups;
  args.c_groups = c_groups;
  if (D) {
    TORCH_CHECK_VALUE(D->numel() == dim, "D must be [D]");
    skip = float32(*D);
    args.skip = skip.data_ptr<float>();
  }
  if (delta_bias) {
    TORCH_CHECK_VALUE(delta_bias->numel() == dim, "delta_bias must be [D]");
    bias = float32(*delta_bias);
    args.bias = bias.data_ptr<float>();
  }
  args.step.softplus = delta_softplus;
  const std::vector<int64_t> state_shape{dim, n};
  if (initial_state) {
    TORCH_CHECK_VALUE(initial_state->numel() == batch * dim * n, "initial_state must be [B, D, N]");
    initial = float32(*initial_state);
    args.initial = initial.data_ptr<float>();
  }
  if (final_state) args.final_state = checked_state_output(*final_state, batch, state_shape);
  args.events = RowEvents::of(batch, state_shape, emit_times, emit_slots, states,
                              inject_times, inject_slots, inject_value, inject_scale, inject_set);
  args.y = OutputRows(y);
  parallel_rows<Scan>(isa, args, batch * dim, length * n);
}

/// `t` [B, G, N] with G raised to `groups` (a multiple of G) by repeating each group.
at::Tensor with_groups(const at::Tensor& t, int64_t groups) {
  return t.size(1) == groups ? t : at::repeat_interleave(t, groups / t.size(1), 1);
}

void selective_scan_step(const at::Tensor& state, const at::Tensor& u, const at::Tensor& delta,
                         const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                         const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                         const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
                         const std::optional<at::Tensor>& inject_value,
                         const std::optional<at::Tensor>& inject_scale, bool inject_set,
                         const at::Tensor& y, const std::optional<at::Tensor>& emit) {
  TORCH_CHECK_VALUE(state.dim() == 3, "state must be [B, D, N]");
  TORCH_CHECK_VALUE(B.dim() == 3 && C.dim() == 3, "B and C must be [B, G, N]");
  const int64_t dim = state.size(1);
  const int64_t groups = std::lcm(B.size(1), C.size(1));
  TORCH_CHECK_VALUE(dim % groups == 0, "the groups of B and C must divide D");
  const std::vector<int64_t> split{groups, dim / groups};  // channel d = (d / rows, d % rows)
  auto heads = [&](const std::optional<at::Tensor>& t, int64_t axis) -> std::optional<at::Tensor> {
    if (!t) return std::nullopt;
    return t->unflatten(axis, split);
  };
  const std::optional<at::Tensor> value = heads(inject_value, 1);
  mamba_state_update(state.unflatten(1, split), u.unflatten(1, split), delta.unflatten(1, split),
                     A.unflatten(0, split), with_groups(B, groups), with_groups(C, groups),
                     heads(D, 0), heads(z, 1), heads(delta_bias, 0), delta_softplus, false, 0.0,
                     0.0, value, inject_scale, inject_set, y.unflatten(1, split),
                     heads(emit, 1));
}

/// The step kernel: one row per (b, h, p), the N loop vectorised.
struct StateUpdate {
  struct Args {
    int64_t heads, head_dim, n, padded, heads_per_group;
    float* state;  // [B, H, P, N] float32 contiguous
    FloatRows x, dt, z;  // [B, H, P] contiguous
    bool has_z;
    const float* A;  // [H, P, N_pad] (padded), or [H, P] per-head decay when a_scalar
    bool a_scalar;
    const float* B;  // [B, G, N_pad]
    const float* C;
    const float* skip;  // [H, P] or null
    const float* bias;  // [H, P] or null
    TimeStep step;
    const float* value;  // [B, H, P, N] or null
    const float* scale;  // [B] or null
    bool set;
    float* emit;  // [B, H, P, N] or null
    OutputRows y;  // [B, H, P]
  };

  template <int W>
  static STATETAP_INLINE void rows(const Args& a, int64_t begin, int64_t end) {
    const int64_t N = a.n, P = a.padded;
    std::vector<float> spill(2 * P), one(3);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t hp = r % (a.heads * a.head_dim), b = r / (a.heads * a.head_dim);
      const int64_t g = hp / a.head_dim / a.heads_per_group;
      const float x = a.x.row(r, 1, one.data())[0];
      float dt = a.dt.row(r, 1, one.data() + 1)[0] + (a.bias ? a.bias[hp] : 0.0f);
      dt = a.step.apply<1>(simd::broadcast<1>(dt))[0];
      float* s = a.state + r * N;
      for (int64_t i = 0; i < P; ++i) spill[i] = i < N ? s[i] : 0.0f;
      const float* Bv = a.B + (b * (a.heads / a.heads_per_group) + g) * P;
      const float* Cv = a.C + (b * (a.heads / a.heads_per_group) + g) * P;
      const F<W> dtv = simd::broadcast<W>(dt), drive = simd::broadcast<W>(dt * x);
      const F<W> decay_scalar = simd::exp<W>(dtv * (a.a_scalar ? a.A[hp] : 0.0f));
      F<W> acc{};
      for (int64_t i = 0; i < P; i += W) {
        F<W> decay = a.a_scalar ? decay_scalar : simd::exp<W>(dtv * simd::load<W>(a.A + hp * P + i));
        F<W> v = decay * simd::load<W>(spill.data() + i) + drive * simd::load<W>(Bv + i);
        acc = acc + v * simd::load<W>(Cv + i);
        simd::store<W>(spill.data() + i, v);
      }
      float out = simd::hsum<W>(acc) + (a.skip ? a.skip[hp] * x : 0.0f);
      if (a.has_z) {
        const float zv = a.z.row(r, 1, one.data() + 2)[0];
        out *= simd::silu<1>(simd::broadcast<1>(zv))[0];
      }
      a.y.write(r, 1, &out);
      if (a.value != nullptr) {
        const float* v = a.value + r * N;
        const float scale = a.scale ? a.scale[b] : 1.0f;
        for (int64_t i = 0; i < N; ++i) spill[i] = a.set ? v[i] : spill[i] + scale * v[i];
      }
      for (int64_t i = 0; i < N; ++i) s[i] = spill[i];
      if (a.emit != nullptr) {
        for (int64_t i = 0; i < N; ++i) a.emit[r * N + i] = spill[i];
      }
    }
  }
};

}  // namespace

void mamba_state_update(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                        const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                        const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                        const std::optional<at::Tensor>& dt_bias, bool dt_softplus,
                        bool dt_limited, double dt_low, double dt_high,
                        const std::optional<at::Tensor>& inject_value,
                        const std::optional<at::Tensor>& inject_scale, bool inject_set,
                        const at::Tensor& y, const std::optional<at::Tensor>& emit) {
  TORCH_CHECK_VALUE(state.dim() == 4, "state must be [B, H, P, N]");
  const int64_t batch = state.size(0), heads = state.size(1), head_dim = state.size(2),
                n = state.size(3);
  const std::vector<int64_t> rows{batch, heads, head_dim};
  TORCH_CHECK_VALUE(x.sizes() == at::IntArrayRef(rows) && dt.sizes() == at::IntArrayRef(rows),
                    "x and dt must be [B, H, P]");
  TORCH_CHECK_VALUE(B.dim() == 3 && B.size(0) == batch && B.size(2) == n &&
                        heads % B.size(1) == 0 && C.sizes() == B.sizes(),
                    "B and C must be [B, G, N] with G dividing H");
  TORCH_CHECK_VALUE(y.sizes() == at::IntArrayRef(rows) && y.is_contiguous(),
                    "y must be contiguous [B, H, P]");
  check_input_dtype("state", state);
  check_input_dtype("x", x);
  check_input_dtype("dt", dt);
  const Isa isa = current_isa();
  const int64_t width = isa_width(isa), padded = (n + width - 1) / width * width;
  at::Tensor work = state.scalar_type() == at::kFloat && state.is_contiguous() ? state
                                                                                : float32(state);
  at::Tensor x_c = x.contiguous(), dt_c = dt.contiguous(), z_c, skip, bias, value, scale;
  const bool a_scalar = A.dim() == 2;  // [H, P]: one decay per (h, p); else [H, P, N]
  at::Tensor A_c = a_scalar ? float32(A) : padded_last(A, 2, padded);
  at::Tensor B_p = padded_last(B, 2, padded), C_p = padded_last(C, 2, padded);
  StateUpdate::Args args{};
  args.heads = heads;
  args.head_dim = head_dim;
  args.n = n;
  args.padded = padded;
  args.heads_per_group = heads / B.size(1);
  args.state = work.data_ptr<float>();
  args.x = FloatRows(x_c);
  args.dt = FloatRows(dt_c);
  args.has_z = z.has_value();
  if (z) {
    z_c = z->contiguous();
    check_input_dtype("z", z_c);
    args.z = FloatRows(z_c);
  }
  args.A = A_c.data_ptr<float>();
  args.a_scalar = a_scalar;
  args.B = B_p.data_ptr<float>();
  args.C = C_p.data_ptr<float>();
  if (D) {
    skip = float32(*D);
    args.skip = skip.data_ptr<float>();
  }
  if (dt_bias) {
    bias = float32(*dt_bias);
    args.bias = bias.data_ptr<float>();
  }
  args.step = TimeStep{dt_softplus, dt_limited, static_cast<float>(dt_low),
                       static_cast<float>(dt_high)};
  if (inject_value) {
    value = float32(inject_value->expand(state.sizes()));
    args.value = value.data_ptr<float>();
    if (inject_scale) {
      scale = float32(inject_scale->expand({batch}));
      args.scale = scale.data_ptr<float>();
    }
  }
  args.set = inject_set;
  // emit copies the state as written back (rounded when the state is float16 / bfloat16)
  const bool emit_direct = emit.has_value() && work.is_same(state);
  if (emit_direct) args.emit = checked_state_output(*emit, batch, {heads, head_dim, n});
  args.y = OutputRows(y);
  parallel_rows<StateUpdate>(isa, args, batch * heads * head_dim, n);
  if (!work.is_same(state)) {
    state.copy_(work);
    if (emit) emit->copy_(state);
  }
}

TORCH_LIBRARY_FRAGMENT(statetap, m) {
  m.def(
      "selective_scan(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
      "Tensor? z, Tensor? delta_bias, bool delta_softplus, Tensor? initial_state, "
      "Tensor(a!) y, Tensor(b!)? final_state, Tensor? emit_times, Tensor? emit_slots, "
      "Tensor(c!)? states, Tensor? inject_times, Tensor? inject_slots, Tensor? inject_value, "
      "Tensor? inject_scale, bool inject_set) -> ()");
  m.def(
      "selective_scan_step(Tensor(a!) state, Tensor u, Tensor delta, Tensor A, Tensor B, "
      "Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, bool delta_softplus, "
      "Tensor? inject_value, Tensor? inject_scale, bool inject_set, Tensor(b!) y, "
      "Tensor(c!)? emit) -> ()");
}

TORCH_LIBRARY_IMPL(statetap, CPU, m) {
  m.impl("selective_scan", &selective_scan);
  m.impl("selective_scan_step", &selective_scan_step);
}

}  // namespace statetap
