"""Adapters for transformers' Mamba, FalconMamba and Mamba-2 causal LMs.

Each mixer calls module-level functions of its modeling file for the convolution
(``causal_conv1d_fn``) and the scan (``mamba_selective_scan`` / ``mamba2_chunk_scan``).
During a pass those names point at statetap's: the scan runs through
:func:`statetap.kernels.selective_scan` / :func:`statetap.kernels.ssd` with the layer's
emission and injection, and the convolution window becomes the ``"conv"`` site
(:mod:`statetap.adapters.conv`).  The models' own code is not copied or forked.

State sites: ``"ssm"`` (Mamba ``[D, N]``, Mamba-2 ``[H, P, N]``, float32) and ``"conv"``
(``[C, K]``: the last ``K`` pre-convolution inputs).

transformers 5.23 hands a mixer its cache as ``cache_params`` and 5.24 as ``cache`` (and
returns it under the same name): the adapter reads the name off the mixer's signature.  5.25
moves the calls into the module functions ``causal_conv1d_forward`` and ``mamba_scan_forward``
/ ``mamba2_scan_forward`` (hub-replaceable ``Func`` modules), which call the same module-level
functions as before: the substitutions do not change, and attach's probe pass proves they run.
Every drop-in takes the arguments transformers passes by name and refuses any other
(:mod:`statetap.adapters.upstream`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from statetap import kernels
from statetap.adapters.base import Adapter
from statetap.adapters.conv import conv_update_with_window_ops, conv_with_window_ops
from statetap.adapters.upstream import cache_argument, drift, refuse_unknown
from statetap.kernels import ScanOutput
from statetap.plan import Pass

#: the names under which transformers' Mamba mixers take their cache, newest first
CACHE_ARGUMENTS = ("cache", "cache_params")


def transformers_selective_scan(
    run: Callable[..., ScanOutput],
    upstream: tuple[str, str] = ("transformers", "mamba_selective_scan"),
) -> Callable:
    """A drop-in for transformers' ``mamba_selective_scan`` (``hidden_states`` ``[B, D, L]``,
    ``dt`` ``[B, D, L]``, ``A`` ``[D, N]``, ``B``/``C`` ``[B, N, L]``) computed by ``run``, a
    scan with :func:`statetap.kernels.selective_scan`'s signature. The drop-in returns ``y``
    ``[B, D, L]``, with the final state ``[B, D, N]`` when ``return_last_state``.

    ``use_mambapy`` / ``use_associative_scan`` choose among transformers' own torch algorithms,
    which ``run`` replaces; other keyword arguments raise :class:`UpstreamDrift`, naming
    ``upstream`` (package, function)."""

    def selective_scan(
        hidden_states,
        dt,
        A,
        B,
        C,
        D=None,
        z=None,
        delta_bias=None,
        delta_softplus=False,
        return_last_state=False,
        use_mambapy=False,
        use_associative_scan=False,
        **unknown,
    ):
        refuse_unknown(*upstream, unknown)
        out = run(
            hidden_states,
            dt,
            A,
            B,
            C,
            D=D,
            z=z,
            delta_bias=delta_bias,
            delta_softplus=delta_softplus,
            output_final_state=return_last_state,
        )
        return (out.y, out.final_state) if return_last_state else out.y

    return selective_scan


class _MambaFamily(Adapter):
    """The Mamba layers of a transformers model (every layer here; a hybrid's
    :attr:`state_layers`, :mod:`statetap.adapters.hybrid`), with the scan of its subclass."""

    state_sites = ("ssm", "conv")
    backbone_name = "backbone"  # the model's attribute holding the blocks and the final norm
    final_norm_name = "norm_f"  # the backbone's attribute holding the final norm
    scan_name: str = ""  # the modeling module's prefill scan
    step_name: str = ""  # its one-token state update (decode)
    conv_name = "causal_conv1d_fn"  # its prefill convolution
    conv_step_name = "causal_conv1d_update"  # its one-token convolution (decode)
    cache_arguments = CACHE_ARGUMENTS  # the names the mixer may take its cache under

    def __init__(self, model) -> None:
        super().__init__(model)
        names = self.cache_arguments
        mixer = self.mamba_mixer(self.state_layers[0])
        mixer_name = cache_argument(self.package, type(mixer).forward, names)
        model_name = cache_argument(self.package, type(model).forward, names)
        if mixer_name != model_name:
            raise drift(
                self.package,
                f"{type(model).__name__}.forward",
                f"takes its cache as {model_name!r} but its mixers as {mixer_name!r}",
            )
        self.cache_name = mixer_name

    @property
    def probe_calls(self):
        prefill = (self.conv_name, self.scan_name)
        return ((2, prefill), (2, prefill), (1, (self.conv_step_name, self.step_name)))

    @property
    def mixer_cache_argument(self) -> str:
        return self.cache_name

    @property
    def backbone(self):
        return getattr(self.model, self.backbone_name)

    @property
    def blocks(self):
        return self.backbone.layers

    @property
    def final_norm(self):
        return getattr(self.backbone, self.final_norm_name)

    def mixer(self, layer: int):
        return self.blocks[layer].mixer

    def mamba_mixer(self, layer: int):
        """The Mamba mixer of ``layer`` (a state layer), whose scan statetap routes."""
        return self.mixer(layer)

    def site_shape(self, site: str) -> tuple[int, ...]:
        mixer = self.mamba_mixer(self.state_layers[0])
        if site == "conv":
            return (mixer.conv1d.weight.shape[0], mixer.conv_kernel_size)
        if site == "ssm":
            return self.ssm_shape(mixer)
        return super().site_shape(site)

    def ssm_shape(self, mixer) -> tuple[int, ...]:
        raise NotImplementedError

    def output_cache(self, output):
        return getattr(output, self.cache_name, None)

    def cache_kwargs(self, cache) -> dict:
        return {self.cache_name: cache, "use_cache": True}

    def select_rows(self, cache, rows: torch.Tensor):
        """Rows ``rows`` of every layer of ``cache``: the Mamba layers' windows and states and,
        on a hybrid, the attention layers' keys and values (each layer's own reorder)."""
        for layer in cache.layers:  # deepcopy refuses tensors with autograd history
            for name, value in list(vars(layer).items()):
                if isinstance(value, torch.Tensor):  # an attention layer's keys, values
                    setattr(layer, name, value.detach())
                elif isinstance(value, dict):  # a Mamba layer's {state index: tensor}
                    for key, tensor in value.items():
                        if isinstance(tensor, torch.Tensor):
                            value[key] = tensor.detach()
        selected = copy.deepcopy(cache)
        selected.reorder_cache(rows)
        return selected

    def cached_state(self, cache, site: str, layer: int) -> torch.Tensor:
        if site == "conv":
            return cache.layers[layer].conv_states[0]
        if site == "ssm":
            return cache.layers[layer].recurrent_states[0]
        raise ValueError(f"{type(self.model).__name__} has no state site {site!r}")

    def write_state(self, cache, site: str, layer: int, value: torch.Tensor) -> None:
        state = self.cached_state(cache, site, layer)
        state.copy_(value.to(state.dtype))

    def enter_layer(self, pass_: Pass, layer: int, kwargs: dict) -> None:
        super().enter_layer(pass_, layer, kwargs)
        cache = pass_.cache
        recording = getattr(cache, "is_recording_past", None)  # transformers' caches only
        if recording is not None and recording(layer):
            # 5.25 then runs the last tokens of a prefill through the one-token step, and keeps a
            # state per token: statetap's per-pass emission and injection would miss them
            raise ValueError(
                "the cache records its past states (Cache.activate_past_recording: assisted "
                "generation, cache cropping); statetap does not instrument such a pass: run it "
                "on a cache that does not record its past"
            )
        # The state before this pass, read before the mixer updates the cache.
        pass_.layer_state = (
            None
            if cache is None or layer not in self.state_layers
            else cache.get_recurrent_state(layer, state_idx=0)
        )

    def substitutions(self, pass_: Pass) -> dict:
        def write_conv_cache(layer: int, window: torch.Tensor) -> None:
            if pass_.cache is not None:
                self.write_state(pass_.cache, "conv", layer, window)

        conv = self.modeling_attribute(self.conv_name)
        return {
            self.conv_name: conv_with_window_ops(
                pass_, conv, write_conv_cache, (self.package, self.conv_name)
            ),
            self.conv_step_name: conv_update_with_window_ops(
                pass_,
                self.modeling_attribute(self.conv_step_name),
                conv,
                (self.package, self.conv_step_name),
            ),
            self.scan_name: self.scan(pass_),
            self.step_name: self.step(pass_),
        }

    def step(self, pass_: Pass):
        raise NotImplementedError

    def scan(self, pass_: Pass):
        raise NotImplementedError

    @staticmethod
    def _instrumentation(pass_: Pass) -> dict:
        """The ``"ssm"`` work of the running layer as kernel arguments."""
        ops = pass_.at("ssm")
        return {} if ops is None else ops.kernel_arguments()

    @staticmethod
    def _store(pass_: Pass, out) -> None:
        if out.states is not None:
            pass_.store("ssm", pass_.layer, pass_.at("ssm").expand_states(out.states))

    @staticmethod
    def _step_work(pass_: Pass) -> dict | None:
        """The running layer's ``"ssm"`` work for one token as the in-place step kernels take it:
        one injection value per row, rows without one adding it times zero.  None when the work
        needs the one-token sequence kernel instead (a ``set`` on some rows only)."""
        ops = pass_.at("ssm")
        if ops is None:
            return {}
        work = {"emit": ops.emit_at is not None}
        injection = ops.injection
        if injection is not None:
            hit = injection.positions == 0  # [B, Q]: one token, so 0 (here) or -1 (unused)
            rows = torch.arange(hit.shape[0], device=hit.device)
            slot = hit.to(torch.uint8).argmax(1)
            injecting = hit.any(1)
            work["inject_value"] = injection.value[rows, slot]
            work["inject_mode"] = injection.mode
            if injection.mode == "set" and not bool(injecting.all()):
                return None
            if injection.mode == "add":
                scale = 1.0 if injection.scale is None else injection.scale[rows, slot]
                work["inject_scale"] = torch.where(injecting, scale, 0.0)
        return work

    @staticmethod
    def _store_step(pass_: Pass, emitted: torch.Tensor | None) -> None:
        """Put a step's emitted state ``[B, *S]`` into the slots that asked for this token."""
        if emitted is not None:
            emit_at = pass_.at("ssm").emit_at
            here = (emit_at == 0).view(*emit_at.shape, *[1] * (emitted.dim() - 1))
            pass_.store("ssm", pass_.layer, torch.where(here, emitted[:, None], 0.0))


class MambaAdapter(_MambaFamily):
    """transformers ``MambaForCausalLM``: ssm state ``[D, N]`` (D = intermediate size)."""

    model_classes = ("MambaForCausalLM",)
    modeling_module = "transformers.models.mamba.modeling_mamba"
    scan_name = "mamba_selective_scan"
    step_name = "mamba_selective_state_update"

    def ssm_shape(self, mixer) -> tuple[int, ...]:
        return (mixer.intermediate_size, mixer.ssm_state_size)

    def scan(self, pass_: Pass):
        def run(*args, **kwargs):
            # transformers' own scan has no initial state: it starts every prefill from zero,
            # even after a cache. statetap continues from the cached state.
            initial = pass_.layer_state
            out = kernels.selective_scan(
                *args,
                **kwargs,
                initial_state=None if initial is None else initial.float(),
                **self._instrumentation(pass_),
            )
            self._store(pass_, out)
            return out

        return transformers_selective_scan(run, (self.package, self.scan_name))

    def step(self, pass_: Pass):
        def state_update(
            state,
            hidden_states,
            dt,
            A,
            B,
            C,
            D=None,
            dt_bias=None,
            dt_softplus=False,
            z=None,
            **unknown,
        ):
            refuse_unknown(self.package, self.step_name, unknown)
            work = self._step_work(pass_)
            if work is not None:  # the in-place decode kernel
                out = kernels.selective_scan_step(
                    state,
                    hidden_states,
                    dt,
                    A,
                    B,
                    C,
                    D=D,
                    z=z,
                    delta_bias=dt_bias,
                    delta_softplus=dt_softplus,
                    **work,
                )
                self._store_step(pass_, out.state)
                return out.y
            # The sequence scan over this one token (it starts from the cached state).
            y, final = self.scan(pass_)(
                hidden_states[..., None],
                dt[..., None],
                A,
                B[..., None],
                C[..., None],
                D=D,
                z=None if z is None else z[..., None],
                delta_bias=dt_bias,
                delta_softplus=dt_softplus,
                return_last_state=True,
            )
            state.copy_(final.to(state.dtype))
            return y[..., 0].to(hidden_states.dtype)

        return state_update


class FalconMambaAdapter(MambaAdapter):
    """transformers ``FalconMambaForCausalLM`` (Mamba-1 with RMS-normalised B, C, dt)."""

    model_classes = ("FalconMambaForCausalLM",)
    modeling_module = "transformers.models.falcon_mamba.modeling_falcon_mamba"


class Mamba2Adapter(_MambaFamily):
    """transformers ``Mamba2ForCausalLM``: ssm state ``[H, P, N]``."""

    model_classes = ("Mamba2ForCausalLM",)
    modeling_module = "transformers.models.mamba2.modeling_mamba2"
    scan_name = "mamba2_chunk_scan"
    step_name = "mamba2_selective_state_update"

    def ssm_shape(self, mixer) -> tuple[int, ...]:
        return (mixer.num_heads, mixer.head_dim, mixer.ssm_state_size)

    def forward(self, input_ids, attention_mask, cache, keep_state, seq_idx=None, **kwargs):
        """As :meth:`Adapter.forward`; ``seq_idx`` ``[B, L]`` (packed sequences) reaches the
        mixers, which ``Mamba2ForCausalLM.forward`` would drop (it passes no extra arguments to
        its backbone), so that the convolution and the scan restart at each new sequence."""
        if seq_idx is None:
            return super().forward(input_ids, attention_mask, cache, keep_state, **kwargs)

        def hand_on(module, args, backbone_kwargs):
            return args, backbone_kwargs | {"seq_idx": seq_idx}

        handle = self.backbone.register_forward_pre_hook(hand_on, with_kwargs=True)
        try:
            return super().forward(input_ids, attention_mask, cache, keep_state, **kwargs)
        finally:
            handle.remove()

    def scan(self, pass_: Pass):
        def chunk_scan(
            hidden_states,
            dt,
            A,
            B,
            C,
            chunk_size,
            D=None,
            z=None,
            dt_bias=None,
            initial_states=None,
            dt_softplus=False,
            dt_limit=(0.0, float("inf")),
            return_final_states=False,
            seq_idx=None,
            **unknown,
        ):
            refuse_unknown(self.package, self.scan_name, unknown)
            out = kernels.ssd(
                hidden_states,
                dt,
                A,
                B,
                C,
                chunk_size,
                D=D,
                z=z,
                dt_bias=dt_bias,
                initial_states=initial_states,
                seq_idx=seq_idx,
                dt_softplus=dt_softplus,
                dt_limit=tuple(dt_limit),
                output_final_state=return_final_states,
                **self._instrumentation(pass_),
            )
            self._store(pass_, out)
            return (out.y, out.final_state) if return_final_states else out.y

        return chunk_scan

    def step(self, pass_: Pass):
        def state_update(
            state,
            hidden_states,
            dt,
            A,
            B,
            C,
            D=None,
            dt_bias=None,
            dt_softplus=False,
            z=None,
            seq_idx=None,
            **unknown,
        ):
            refuse_unknown(self.package, self.step_name, unknown)
            if seq_idx is not None:
                raise ValueError(
                    "seq_idx marks packed sequences in a prefill; a one-token decode step "
                    "continues one sequence: pass seq_idx to the prefill only"
                )
            # transformers expands the per-head A, dt, dt_bias and D over the head dimension.
            dt, A = dt[..., 0], A[:, 0, 0]
            dt_bias = None if dt_bias is None else dt_bias[:, 0]
            work = self._step_work(pass_)
            if work is not None:  # the in-place decode kernel
                out = kernels.ssd_step(
                    state,
                    hidden_states,
                    dt,
                    A,
                    B,
                    C,
                    D=D,
                    z=z,
                    dt_bias=dt_bias,
                    dt_softplus=dt_softplus,
                    **work,
                )
                self._store_step(pass_, out.state)
                return out.y
            # The sequence scan over this one token, from the cached state.
            y, final = self.scan(pass_)(
                hidden_states[:, None],
                dt[:, None],
                A,
                B[:, None],
                C[:, None],
                1,
                D=D,
                z=None if z is None else z[:, None],
                dt_bias=dt_bias,
                initial_states=state.float(),
                dt_softplus=dt_softplus,
                return_final_states=True,
            )
            state.copy_(final.to(state.dtype))
            return y[:, 0].to(hidden_states.dtype)

        return state_update
