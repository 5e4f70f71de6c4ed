"""Independent references for ``statetap check``, and the token-by-token driver it shares.

The float64 comparison of ``statetap check`` cannot see a bug in an op's definition where the
device's backend *is* that definition (Mamba-1's selective scan and RWKV-4 have one form only,
so on a CPU it compares the definition with itself).  :data:`PEERS` are implementations we did
not write, transformers' own torch paths (a runtime dependency), fed float64 copies of the
inputs and driven one token at a time:

* ``wkv4``: ``rwkv_linear_attention_cpu`` of ``transformers.models.rwkv.modeling_rwkv``, with the
  state as its ``[aa, bb, pp]`` list (exact in float64);
* ``selective_scan``: ``mamba_selective_state_update`` of
  ``transformers.models.mamba.modeling_mamba``, the one-token decode step, called once per group
  of ``D / G`` channels (it has no groups); it updates the state in float32 whatever its inputs;
* ``delta_rule``: ``torch_recurrent_gated_delta_rule`` of
  ``transformers.models.qwen3_next.modeling_qwen3_next``, called on one token at a time from the
  state (it computes in float32 whatever its inputs).

Both module attributes may stand in front of something else: a hub-kernel decorator that can
route a call to mamba-ssm's or a hub's CUDA kernel, and from transformers 5.25 (which requires the
``kernels`` package) a hub-kernel ``Func`` module.  :func:`torch_function` peels each off, checks
that what it reaches is the module's own torch code, and names the route, which ``statetap
check`` prints.

A :class:`Probe` is what the check asks of every op: a start state, emission after some tokens
and a per-row add injection after one.  On a peer, the state emitted at ``t`` is the peer's state
after token ``t`` and the injection edits that state before the peer goes on to token ``t + 1``
(the state contract, ``docs/semantics.md``).  :func:`run_by_token` drives a peer or a decode
step through the tokens with that probe.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from statetap.kernels import ScanOutput
from statetap.kernels.examples import OpCase

#: (state ``[B, *S]`` updated in place, one token's inputs, inject after it?, emit after it?)
#: -> ``(y_t, emitted [B, *S] or None)``
Advance = Callable[[torch.Tensor, dict, bool, bool], tuple[torch.Tensor, torch.Tensor | None]]
#: (state ``[B, *S]`` updated in place, one token's inputs) -> ``y_t``
TokenStep = Callable[[torch.Tensor, dict], torch.Tensor]

RWKV_MODULE = "transformers.models.rwkv.modeling_rwkv"
MAMBA_MODULE = "transformers.models.mamba.modeling_mamba"
QWEN3_NEXT_MODULE = "transformers.models.qwen3_next.modeling_qwen3_next"


@dataclass(frozen=True)
class Probe:
    """Emission and injection asked of one op run.

    Attributes:
        initial_state: ``[B, *S]`` state before token 0.
        emit_at: sorted token positions whose states are emitted.
        inject_at: the token after which ``S += scale[b] * value`` (add mode).
        value: ``[*S]`` injected value, shared by the rows.
        scale: ``[B]`` per-row multiplier of ``value``.
    """

    initial_state: torch.Tensor
    emit_at: tuple[int, ...]
    inject_at: int
    value: torch.Tensor
    scale: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Probe:
        """The same probe with its tensors on ``device`` in ``dtype``."""
        return Probe(
            self.initial_state.to(device, dtype),
            self.emit_at,
            self.inject_at,
            self.value.to(device, dtype),
            self.scale.to(device, dtype),
        )

    def instrumentation(self) -> dict:
        """The probe as the instrumentation keywords of a sequence op (final state included)."""
        device = self.value.device
        return dict(
            initial_state=self.initial_state,
            output_final_state=True,
            emit_at=torch.tensor(self.emit_at, device=device),
            inject_at=torch.tensor([self.inject_at], device=device),
            inject_value=self.value[None, None],
            inject_scale=self.scale,
        )

    def injection(self) -> torch.Tensor:
        """``[B, *S]``: what the injection adds to each row's state."""
        return self.scale.view(-1, *(1,) * self.value.dim()) * self.value


def run_by_token(
    advance: Advance, case: OpCase, inputs: dict, length: int, probe: Probe
) -> ScanOutput:
    """Run ``advance`` over tokens ``0 .. length-1`` of ``inputs`` (``case``'s layout) from a copy
    of ``probe.initial_state``, telling it after which token to inject and emit.

    Returns ``ScanOutput(y, final_state [B, *S], states [B, P, *S])`` laid out as ``case``'s op
    returns them, so that it compares directly with the op's output under
    ``probe.instrumentation()``.
    """
    state = probe.initial_state.clone()
    ys, states = [], []
    for t in range(length):
        token = {
            name: value.select(case.time_axes[name], t) if name in case.time_axes else value
            for name, value in inputs.items()
        }
        y, emitted = advance(state, token, t == probe.inject_at, t in probe.emit_at)
        ys.append(y)
        if t in probe.emit_at:
            states.append(emitted)
    return ScanOutput(torch.stack(ys, case.y_time_axis), state, torch.stack(states, 1))


class Resolution(NamedTuple):
    """transformers' torch function behind a module attribute, and the way to it."""

    function: Callable
    route: str  # e.g. "modeling_mamba.mamba_selective_state_update -> kernels hub module ..."


def _closed_over_function(module: torch.nn.Module) -> Callable | None:
    """The function a hub-kernel ``Func`` module (the ``kernels`` package's
    ``use_kernel_forward_from_hub`` applied to a function, transformers >= 5.25) runs by default:
    the ``func`` its ``forward`` closes over."""
    forward = type(module).forward
    cells = dict(zip(forward.__code__.co_freevars, forward.__closure__ or ()))
    function = cells["func"].cell_contents if "func" in cells else None
    return function if callable(function) else None


def torch_function(module_name: str, name: str) -> Resolution:
    """transformers' pure-torch function ``module_name.name``, whatever stands in front of it: a
    hub-kernel ``Func`` module (5.25) and hub-kernel decorators (which can route calls to
    mamba-ssm's or a hub's CUDA kernel instead) are peeled off, and :attr:`Resolution.route`
    names each.

    Raises RuntimeError when the function is missing, or what it leads to is not the torch code
    of that module; the message names what it resolved to.
    """
    module = importlib.import_module(module_name)
    found = getattr(module, name, None)
    if found is None:
        raise RuntimeError(
            f"{module_name} has no {name}; statetap check compares with transformers' torch path"
        )
    route = [f"{module_name}.{name}"]
    function = found
    while True:
        if isinstance(function, torch.nn.Module):
            inner = _closed_over_function(function)
            if inner is None:
                break
            route.append(f"hub-kernel module {type(function).__qualname__}")
            function = inner
        elif hasattr(function, "__wrapped__"):
            code = getattr(function, "__code__", None)
            route.append(f"wrapper {getattr(code, 'co_qualname', None) or repr(function)}")
            function = function.__wrapped__
        else:
            break
    code = getattr(function, "__code__", None)
    if (
        getattr(function, "__name__", None) != name
        or code is None
        or os.path.realpath(code.co_filename) != os.path.realpath(module.__file__)
    ):
        raise RuntimeError(
            f"{module_name}.{name} resolves to {function!r} (through {' -> '.join(route)}), "
            f"not transformers' pure-torch function; statetap check will not compare with a "
            f"different implementation"
        )
    route.append(f"{name} at {os.path.basename(code.co_filename)}:{code.co_firstlineno}")
    return Resolution(function, " -> ".join(route))


def _rwkv4_peer(attention: Callable) -> TokenStep:

    def token_step(state: torch.Tensor, token: dict) -> torch.Tensor:
        # statetap's log-decay w is -exp(time_decay); the peer's state is [aa, bb, pp] of [B, C]
        y, new = attention(
            torch.log(-token["w"]),
            token["u"],
            token["k"][:, None],
            token["v"][:, None],
            state=list(state.unbind(1)),
        )
        state.copy_(torch.stack(new, dim=1))
        return y[:, 0]

    return token_step


def _mamba_peer(update: Callable) -> TokenStep:

    def token_step(state: torch.Tensor, token: dict) -> torch.Tensor:
        B, C = token["B"], token["C"]  # [B, G, N]
        if B.dim() != 3 or C.shape != B.shape:
            raise ValueError(f"B and C must be grouped [B, G, N, L], got B {list(B.shape)}")
        width = state.shape[1] // B.shape[1]
        ys = []
        for group in range(B.shape[1]):
            rows = slice(group * width, (group + 1) * width)
            ys.append(
                update(
                    state[:, rows],  # a view: the peer's in-place update lands in ``state``
                    token["u"][:, rows],
                    token["delta"][:, rows],
                    token["A"][rows],
                    B[:, group],
                    C[:, group],
                    D=token["D"][rows],
                    dt_bias=token["delta_bias"][rows],
                    dt_softplus=token["delta_softplus"],
                    z=token["z"][:, rows],
                )
            )
        return torch.cat(ys, dim=1)

    return token_step


def _gated_delta_peer(recurrent: Callable) -> TokenStep:

    def token_step(state: torch.Tensor, token: dict) -> torch.Tensor:
        y, new = recurrent(
            *(token[name][:, None] for name in ("query", "key", "value", "g", "beta")),
            initial_state=state,
            output_final_state=True,
            use_qk_l2norm_in_kernel=token["use_qk_l2norm_in_kernel"],
        )
        state.copy_(new)
        return y[:, 0]

    return token_step


@dataclass(frozen=True)
class Peer:
    """An independent implementation of one op, run one token at a time: transformers' torch
    function ``module.function``, driven by ``make`` (the function -> a :data:`TokenStep`)."""

    module: str
    function: str
    make: Callable[[Callable], TokenStep]

    @property
    def label(self) -> str:
        """The reference column of the check table."""
        return f"transformers {self.function}"

    def resolve(self) -> Resolution:
        """The torch function and the way to it (:func:`torch_function`)."""
        return torch_function(self.module, self.function)

    def run(self, case: OpCase, inputs: dict, length: int, probe: Probe) -> ScanOutput:
        """The peer on ``inputs`` (``case``'s layout and example keywords) with the probe's
        injection applied to, and emission read from, the peer's own state."""
        token_step = self.make(self.resolve().function)

        def advance(state, token, inject, emit):
            y = token_step(state, token)
            if inject:
                state.add_(probe.injection())
            return y, state.clone() if emit else None

        return run_by_token(advance, case, inputs, length, probe)


#: op -> its independent reference
PEERS = {
    "selective_scan": Peer(MAMBA_MODULE, "mamba_selective_state_update", _mamba_peer),
    "wkv4": Peer(RWKV_MODULE, "rwkv_linear_attention_cpu", _rwkv4_peer),
    "delta_rule": Peer(QWEN3_NEXT_MODULE, "torch_recurrent_gated_delta_rule", _gated_delta_peer),
}
