// What the Mamba-1 (selective_scan.cpp) and Mamba-2 (ssd.cpp) kernels share: the time-step
// discretisation, the gated output, and the decode step (one token, state updated in place)
// that both steps run, as the Triton step kernel does: the state seen as [B, H, P, N], Mamba-1's
// D channels being H = G groups of P = D / G rows, Mamba-2's heads H with P channels each.
// mamba_state_update is defined in selective_scan.cpp; ssd.cpp registers ssd_step on it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "simd.h"

namespace statetap {

/// How a Mamba time step is discretised: dt = clamp(softplus(dt_raw + bias), low, high), the
/// softplus and the clamp each optional.
struct TimeStep {
  bool softplus = false, limited = false;
  float low = 0.0f, high = 0.0f;

  template <int W>
  STATETAP_INLINE simd::F<W> apply(simd::F<W> raw) const {
    simd::F<W> dt = softplus ? simd::softplus<W>(raw) : raw;
    if (limited) {
      dt = simd::min<W>(simd::max<W>(dt, simd::broadcast<W>(low)), simd::broadcast<W>(high));
    }
    return dt;
  }

  /// dt[t] = apply(raw[t] + bias) for t < L (in place allowed), vectorised over t.
  template <int W>
  STATETAP_INLINE void row(const float* raw, int64_t L, float bias, float* dt) const {
    int64_t t = 0;
    for (; t + W <= L; t += W) simd::store<W>(dt + t, apply<W>(simd::load<W>(raw + t) + bias));
    for (; t < L; ++t) dt[t] = apply<1>(simd::broadcast<1>(raw[t] + bias))[0];
  }
};

/// y[i] = (y[i] + skip[i % period] x[i]) * silu(z[i]) for i < n (skip and z optional),
/// vectorised over i where the period allows.
template <int W>
STATETAP_INLINE void gated_output(float* y, const float* x, const float* skip, int64_t period,
                                  const float* z, int64_t n) {
  if (skip != nullptr) {
    for (int64_t i = 0; i < n; ++i) y[i] += skip[i % period] * x[i];
  }
  if (z != nullptr) {
    int64_t i = 0;
    for (; i + W <= n; i += W) {
      simd::store<W>(y + i, simd::load<W>(y + i) * simd::silu<W>(simd::load<W>(z + i)));
    }
    for (; i < n; ++i) y[i] *= simd::silu<1>(simd::broadcast<1>(z[i]))[0];
  }
}

/// One token of `S = exp(dt A) S + dt x B^T; y = S C + D x; y *= silu(z)`, then the injection
/// (`S = value` when `inject_set`, else `S += scale * value`), written back into `state`, and a
/// float32 copy into `emit` when given.
///
/// Shapes: state [B, H, P, N] (float32/16, bf16, any strides); x, dt, z [B, H, P]; A [H, P, N]
/// or [H, P] (Mamba-2: one decay per head, dt broadcast over P); B, C
/// [B, G, N] with G dividing H; D, dt_bias [H, P]; inject_value [B, H, P, N]; inject_scale
/// [B]; emit [B, H, P, N] contiguous float32; y [B, H, P] contiguous (any input dtype) receives
/// the output.  dt is clamped to [dt_low, dt_high] after the softplus when `dt_limited`.
void mamba_state_update(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                              const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                              const std::optional<at::Tensor>& D,
                              const std::optional<at::Tensor>& z,
                              const std::optional<at::Tensor>& dt_bias, bool dt_softplus,
                              bool dt_limited, double dt_low, double dt_high,
                              const std::optional<at::Tensor>& inject_value,
                              const std::optional<at::Tensor>& inject_scale, bool inject_set,
                              const at::Tensor& y, const std::optional<at::Tensor>& emit);

}  // namespace statetap
