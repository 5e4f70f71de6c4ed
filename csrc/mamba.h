// The decode step shared by Mamba-1 and Mamba-2 (one token, state updated in place), as the
// Triton step kernel: the state is seen as [B, H, P, N], Mamba-1's D channels being H = G groups
// of P = D / G rows, Mamba-2's heads H with P channels each.  Defined in selective_scan.cpp;
// ssd.cpp registers ssd_step on it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace statetap {

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
