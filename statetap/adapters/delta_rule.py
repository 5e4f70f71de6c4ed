"""Adapters for transformers' gated delta-rule hybrids: Qwen3-Next, OLMo-hybrid, Kimi Linear.

Their linear-attention layers (``Qwen3NextGatedDeltaNet``, ``OlmoHybridGatedDeltaNet``,
``KimiLinearDeltaAttention``, by ``config.layer_types``) run a short causal convolution over the
concatenated query/key/value projections, then the gated delta rule; the attention layers
between them keep a KV cache.  Each delta layer calls module-level functions of its modeling
file: ``causal_conv1d_fn`` / ``causal_conv1d_update`` (prefill / decode convolution, reached
through ``causal_conv1d_forward``) and a chunked / recurrent delta rule
(``torch_chunk_gated_delta_rule`` / ``torch_recurrent_gated_delta_rule``; Kimi's
``chunk_kimi_delta_attention`` / ``recurrent_kimi_delta_attention``).  During a pass those names
point at statetap's: the delta rule runs through :func:`statetap.kernels.delta_rule` with the
layer's emission and injection (a decode token through the in-place step
:func:`statetap.kernels.delta_rule_step`), and the convolution window becomes the ``"conv"`` site
(:mod:`statetap.adapters.conv`), convolved by statetap's torch convolution.

transformers 5.25 wraps each of those functions in ``use_kernel_func_from_hub_with_fallback``,
which calls fla's (or causal-conv1d's) kernels when they are installed and support the inputs'
device.  The substitutions replace the wrapped functions themselves, so a pass computes the same
thing whichever implementation transformers would have picked, and runs on a CPU even where that
pick would not.

State sites, on the delta layers only (:attr:`state_layers`):

* ``"recurrent"`` ``[HV, K, V]`` float32: the delta rule's matrix state ``S`` (value heads
  ``HV``; Qwen3-Next's query/key heads each serve ``HV / HK`` of them), as the model's cache
  holds it (``cache.layers[l].recurrent_states[0]``); ``y_t = S_t^T q_t`` (scaled, normalised);
* ``"conv"`` ``[C, K]``: the last ``K`` inputs of the short convolution, ``C = 2 HK K + HV V``
  channels (query, key, value), as ``cache.layers[l].conv_states[0]``.

The hybrid structure (which layers hold a state, each layer's token mixer and cache argument,
the hybrid cache, row selection) is :class:`~statetap.adapters.hybrid.HybridMamba`'s: the delta
layers take the place of the Mamba layers there, with the same convolution window and the
same cache layer.
"""

from __future__ import annotations

import torch

from statetap import kernels
from statetap.adapters.conv import (
    causal_conv1d,
    causal_conv1d_update,
    conv_update_with_window_ops,
    conv_with_window_ops,
)
from statetap.adapters.hybrid import HybridMamba
from statetap.adapters.upstream import refuse_unknown
from statetap.plan import Pass

#: the site of the matrix state, and the name the Mamba family gives the cache entry it reads
RECURRENT = "recurrent"
_FAMILY_SITE = {RECURRENT: "ssm"}


class DeltaRuleHybrid(HybridMamba):
    """The delta layers of a transformers hybrid, with the attention layers left as they are;
    subclasses name the model class, the modeling module, the mixer class and the functions."""

    state_sites = (RECURRENT, "conv")
    token_mixer_attributes = ("linear_attn", "self_attn")

    # ------------------------------------------------------------------ structure
    def site_shape(self, site: str) -> tuple[int, ...]:
        if site == RECURRENT:
            return self.recurrent_shape(self.mamba_mixer(self.state_layers[0]))
        return super().site_shape(site)

    def recurrent_shape(self, mixer) -> tuple[int, int, int]:
        """``(HV, K, V)`` of ``mixer``'s matrix state."""
        return (mixer.num_v_heads, mixer.head_k_dim, mixer.head_v_dim)

    def cached_state(self, cache, site: str, layer: int) -> torch.Tensor:
        return super().cached_state(cache, _FAMILY_SITE.get(site, site), layer)

    def forward(self, input_ids, attention_mask, cache, keep_state, **kwargs):
        """As :meth:`HybridMamba.forward`; refuses packed sequences (``cu_seq_lens_*``), and
        pad tokens among the new tokens of a pass that continues from a state
        (``attention_mask`` may hold the cached tokens' mask first): each pad would decay the
        state (``exp(g) < 1`` even on a zeroed input) and shift the window, so the row would
        not compute what it computes alone."""
        packed = sorted(name for name in kwargs if name.startswith("cu_seq_lens"))
        if packed:
            raise ValueError(
                f"packed sequences ({', '.join(packed)}) are not supported on "
                f"{type(self.model).__name__}: pass one sequence per row (padded) instead"
            )
        new = None if attention_mask is None else attention_mask[:, -input_ids.shape[1] :]
        if cache is not None and new is not None and not bool(new.all()):
            raise ValueError(
                f"{type(self.model).__name__}'s delta layers decay the state on every token, pad "
                "tokens included: a pass continuing from a state must have no padding "
                "(attention_mask all ones, or None); pad the first pass on the left instead"
            )
        return super().forward(input_ids, attention_mask, cache, keep_state, **kwargs)

    # ------------------------------------------------------------------ one pass
    def substitutions(self, pass_: Pass) -> dict:
        # The convolutions are statetap's torch ones, not the modeling module's, which may be
        # routed to a kernel that cannot run on the inputs' device.
        def write_conv_cache(layer: int, window: torch.Tensor) -> None:
            if pass_.cache is not None:
                self.write_state(pass_.cache, "conv", layer, window)

        return {
            self.conv_name: conv_with_window_ops(
                pass_, causal_conv1d, write_conv_cache, (self.package, self.conv_name)
            ),
            self.conv_step_name: conv_update_with_window_ops(
                pass_, causal_conv1d_update, causal_conv1d, (self.package, self.conv_step_name)
            ),
            self.scan_name: self.delta_rule(pass_, self.scan_name),
            self.step_name: self.delta_rule(pass_, self.step_name),
        }

    def delta_rule(self, pass_: Pass, upstream: str):
        """A drop-in for the modeling module's chunked or recurrent delta rule ``upstream``
        (``query``/``key`` ``[B, L, HK, K]``, ``value`` ``[B, L, HV, V]``, ``g`` ``[B, L, HV]``
        or ``[B, L, HV, K]``, ``beta`` ``[B, L, HV]``, ``initial_state`` ``[B, HV, K, V]``)
        computed with the running layer's ``"recurrent"`` work by
        :func:`statetap.kernels.delta_rule_step` for a decode token (``L = 1`` continuing from
        a state: the cache's float32 state is updated in place, as transformers' cache layer
        expects), else :func:`statetap.kernels.delta_rule`.  Returns
        ``(output [B, L, HV, V], final state or None)``.

        ``chunk_size`` is transformers' own choice of blocking, which statetap's kernels make
        for themselves; packed sequences (``cu_seqlens``) raise ValueError; other keyword
        arguments raise :class:`UpstreamDrift`."""

        def run(
            query,
            key,
            value,
            g,
            beta,
            *,  # the chunked and the recurrent form order the rest differently: by name only
            chunk_size=None,
            initial_state=None,
            output_final_state=False,
            use_qk_l2norm_in_kernel=False,
            cu_seqlens=None,
            **unknown,
        ):
            refuse_unknown(self.package, upstream, unknown)
            if cu_seqlens is not None:
                raise ValueError(
                    f"packed sequences (cu_seqlens) are not supported on "
                    f"{type(self.model).__name__}: pass one sequence per row (padded) instead"
                )
            ops = pass_.at(RECURRENT)
            instrumentation = {} if ops is None else ops.kernel_arguments()
            if query.shape[1] == 1 and initial_state is not None and output_final_state:
                state = initial_state.float().contiguous()  # the cache's own tensor if it can
                out = kernels.delta_rule_step(
                    query[:, 0],
                    key[:, 0],
                    value[:, 0],
                    g[:, 0],
                    beta[:, 0],
                    state,
                    use_qk_l2norm_in_kernel,
                    **instrumentation,
                )
                y = out.y[:, None]
            else:
                out = kernels.delta_rule(
                    query,
                    key,
                    value,
                    g,
                    beta,
                    initial_state=None if initial_state is None else initial_state.float(),
                    output_final_state=output_final_state,
                    use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                    **instrumentation,
                )
                y = out.y
            if out.states is not None:
                pass_.store(RECURRENT, pass_.layer, ops.expand_states(out.states))
            return y, out.final_state

        return run


class _GatedDeltaNet(DeltaRuleHybrid):
    """Qwen3-Next's and OLMo-hybrid's delta rule: one log gate per value head."""

    scan_name = "torch_chunk_gated_delta_rule"
    step_name = "torch_recurrent_gated_delta_rule"


class Qwen3NextAdapter(_GatedDeltaNet):
    """transformers ``Qwen3NextForCausalLM``: ``Qwen3NextGatedDeltaNet`` layers (grouped heads,
    ``HV = n HK``) and gated attention layers, each followed by a mixture of experts or an
    MLP.  The ``"mixer"`` site of a delta layer is its output after the gated norm and the
    output projection."""

    model_classes = ("Qwen3NextForCausalLM",)
    modeling_module = "transformers.models.qwen3_next.modeling_qwen3_next"
    mamba_mixer_class = "Qwen3NextGatedDeltaNet"


class OlmoHybridAdapter(_GatedDeltaNet):
    """transformers ``OlmoHybridForCausalLM``: ``OlmoHybridGatedDeltaNet`` layers (with
    ``linear_allow_neg_eigval`` the write strength ``beta`` ranges over ``(0, 2)``) and
    attention layers.  The ``"mixer"`` site of an attention layer is its output before the
    block's post-attention norm."""

    model_classes = ("OlmoHybridForCausalLM",)
    modeling_module = "transformers.models.olmo_hybrid.modeling_olmo_hybrid"
    mamba_mixer_class = "OlmoHybridGatedDeltaNet"


class KimiLinearAdapter(DeltaRuleHybrid):
    """transformers ``KimiLinearForCausalLM``: Kimi Delta Attention layers (KDA: one log gate
    per key channel, ``g`` ``[B, L, H, K]``, ``HV = HK = H`` and ``K = V``) and multi-head
    latent attention layers; both sit in the block's ``self_attn``."""

    model_classes = ("KimiLinearForCausalLM",)
    modeling_module = "transformers.models.kimi_linear.modeling_kimi_linear"
    mamba_mixer_class = "KimiLinearDeltaAttention"
    scan_name = "chunk_kimi_delta_attention"
    step_name = "recurrent_kimi_delta_attention"

    def recurrent_shape(self, mixer) -> tuple[int, int, int]:
        return (mixer.num_heads, mixer.head_dim, mixer.head_dim)
