"""The peers the GPU benchmarks compare with: importing, bounding and chaining them.

* mamba-ssm: its Triton baselines (``mamba_chunk_scan_combined``, ``selective_state_update``)
  import only past ``mamba_ssm/__init__``, which imports the CUDA extension
  ``selective_scan_cuda``. Where that extension is missing (the pure-Python wheel the suite
  carries), :func:`mamba_triton` puts a stub module in its place first and says so; the CUDA
  ``selective_scan_fn`` (:func:`mamba_cuda_scan`) is then unavailable, with the reason.
* flash-linear-attention (fla-core): ``chunk_rwkv6``, ``fused_recurrent_rwkv6``, ``chunk_rwkv7``,
  the latter called with the decay bound fla's RWKV-7 layer passes (:data:`RWKV7_LOWER_BOUND`).
* :func:`bound_autotuning` replaces the config list of every autotuned kernel of both peers by
  one config of that list, so that their cold start costs one compile per kernel;
  :data:`FORWARD_KERNELS` names the kernels the timed calls launch, which must all be found.
* :func:`chain_segments`: the baseline a user writes without statetap, the peer's plain kernel
  called once per segment between emission points, each call starting from the previous final
  state.

A peer that cannot be used raises :class:`PeerUnavailable` with the reason; the benchmarks
record it as a ``missing`` row.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Sequence

#: RWKV-7's log-decay is ``w = -exp(-0.5) * sigmoid(.)`` in fla's RWKV7 layer (and in the
#: official models), so ``w >= -exp(-0.5)``; the layer passes this as ``lower_bound``, which lets
#: ``chunk_rwkv7`` take 64-token chunks on tensor cores instead of 16-token chunks.
RWKV7_LOWER_BOUND = -0.6065306597126334

STUB_NAME = "selective_scan_cuda"

#: module -> autotuned kernels that the benchmarks' peer calls launch (forward only). Every one
#: must exist in the locked versions (mamba-ssm 2.3.2.post1, fla-core 0.6.0): a renamed kernel
#: is an error, never a silently unbounded autotune.
FORWARD_KERNELS: dict[str, tuple[str, ...]] = {
    "mamba_ssm.ops.triton.ssd_chunk_state": ("_chunk_cumsum_fwd_kernel", "_chunk_state_fwd_kernel"),
    "mamba_ssm.ops.triton.ssd_state_passing": ("_state_passing_fwd_kernel",),
    "mamba_ssm.ops.triton.ssd_bmm": ("_bmm_chunk_fwd_kernel",),
    "mamba_ssm.ops.triton.ssd_chunk_scan": ("_chunk_scan_fwd_kernel",),
    "fla.ops.rwkv6.chunk": (
        "chunk_rwkv6_fwd_cumsum_kernel",
        "chunk_rwkv6_fwd_A_kernel_intra_sub_inter",
        "chunk_rwkv6_fwd_A_kernel_intra_sub_intra",
    ),
    "fla.ops.rwkv6.fused_recurrent": ("fused_recurrent_rwkv6_fwd_kernel",),
    "fla.ops.common.chunk_h": ("chunk_fwd_kernel_h",),
    "fla.ops.gla.chunk": ("chunk_gla_fwd_kernel_o",),
    "fla.ops.utils.cumsum": ("chunk_local_cumsum_vector_kernel",),
    "fla.ops.generalized_delta_rule.dplr.chunk_A_fwd": (
        "chunk_dplr_fwd_A_kernel_intra_sub_intra",
        "chunk_dplr_fwd_A_kernel_intra_tensorcore",
    ),
    "fla.ops.generalized_delta_rule.dplr.wy_fast_fwd": (
        "prepare_wy_repr_fwd_kernel_chunk64",
        "wu_fwd_kernel",
    ),
    "fla.ops.generalized_delta_rule.dplr.chunk_h_fwd": ("chunk_dplr_fwd_kernel_h",),
    "fla.ops.generalized_delta_rule.dplr.chunk_o_fwd": ("chunk_dplr_fwd_kernel_o",),
}
#: the packages whose every autotuned kernel :func:`bound_autotuning` bounds
PEER_PACKAGES = ("mamba_ssm", "fla")


class PeerUnavailable(RuntimeError):
    """A peer that cannot be imported or called here; the message is the reason."""


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def cuda_extension_state() -> str:
    """``"real"``, ``"stub"`` (a module without a file in sys.modules: ours or another
    stand-in) or ``"absent"`` for ``selective_scan_cuda``."""
    module = sys.modules.get(STUB_NAME)
    if module is not None:
        return "real" if getattr(module, "__file__", None) else "stub"
    return "real" if importlib.util.find_spec(STUB_NAME) is not None else "absent"


def stub_selective_scan_cuda() -> bool:
    """Put a stub ``selective_scan_cuda`` in ``sys.modules`` where the real one is missing.

    Returns True when the stub is (now) in place, False when the real extension imports. Any
    call of the stub's functions raises :class:`PeerUnavailable`."""
    state = cuda_extension_state()
    if state == "real":
        return False
    if state == "absent":
        stub = types.ModuleType(STUB_NAME, "statetap's stand-in for mamba-ssm's CUDA extension")

        def attribute(name: str):
            if name.startswith("__"):
                raise AttributeError(name)  # what introspection (inspect, hasattr) expects

            def missing(*args, **kwargs):
                raise PeerUnavailable(
                    f"selective_scan_cuda.{name}: mamba-ssm's CUDA extension is not built here "
                    "(statetap's benchmarks stubbed it to import mamba-ssm's Triton kernels)"
                )

            return missing

        stub.__getattr__ = attribute
        sys.modules[STUB_NAME] = stub
    return True


def mamba_triton() -> dict:
    """mamba-ssm's Triton baselines, importable without the CUDA extension.

    Returns ``{"mamba_chunk_scan_combined", "selective_state_update", "note"}``; ``note`` says
    whether ``selective_scan_cuda`` had to be stubbed. Raises :class:`PeerUnavailable`."""
    stubbed = stub_selective_scan_cuda()
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as error:  # noqa: BLE001 - any import failure makes the peer unavailable
        raise PeerUnavailable(
            f"mamba_ssm Triton kernels do not import: {_reason(error)}"
        ) from error
    note = "selective_scan_cuda stubbed (not built)" if stubbed else "selective_scan_cuda present"
    return {
        "mamba_chunk_scan_combined": mamba_chunk_scan_combined,
        "selective_state_update": selective_state_update,
        "note": note,
    }


def mamba_cuda_scan() -> Callable:
    """mamba-ssm's CUDA ``selective_scan_fn``; :class:`PeerUnavailable` where it is not built."""
    state = cuda_extension_state()
    if state != "real":
        raise PeerUnavailable(
            "mamba-ssm's CUDA selective_scan_fn needs its compiled extension selective_scan_cuda, "
            f"which is {'stubbed' if state == 'stub' else 'not installed'} here (the carried "
            "mamba-ssm wheel is built without CUDA; building it with nvcc takes far longer than "
            "a suite call)"
        )
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as error:  # noqa: BLE001
        raise PeerUnavailable(f"selective_scan_fn does not import: {_reason(error)}") from error
    return selective_scan_fn


def fla() -> dict:
    """fla-core's ``chunk_rwkv6``, ``fused_recurrent_rwkv6``, ``chunk_rwkv7``, or
    :class:`PeerUnavailable` (carry the fla-core wheel: ``scripts/gpu_wheels.sh``)."""
    try:
        from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6
        from fla.ops.rwkv7 import chunk_rwkv7
    except Exception as error:  # noqa: BLE001
        raise PeerUnavailable(f"fla (fla-core) does not import: {_reason(error)}") from error
    return {
        "chunk_rwkv6": chunk_rwkv6,
        "fused_recurrent_rwkv6": fused_recurrent_rwkv6,
        "chunk_rwkv7": chunk_rwkv7,
    }


def _autotuner(obj):
    """The triton Autotuner inside ``obj`` (itself, or under Heuristics wrappers), or None."""
    from triton.runtime.autotuner import Autotuner

    for _ in range(4):
        if isinstance(obj, Autotuner):
            return obj
        obj = getattr(obj, "fn", None)
    return None


def autotuned_kernels() -> dict[str, object]:
    """``{"module.kernel": Autotuner}`` of every autotuned kernel of the peers imported so far."""
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in PEER_PACKAGES:
            continue
        for attr, obj in list(vars(module).items()):
            tuner = _autotuner(obj)
            # a kernel is listed under the module that defines it, not under its importers
            if tuner is not None and getattr(tuner.base_fn, "__module__", name) == name:
                found[f"{name}.{attr}"] = tuner
    return found


def bound_autotuning(mode: str | None = None) -> dict[str, str]:
    """Bound the peers' autotuning; returns ``{"module.kernel": the config kept}``.

    ``mode`` (default: ``$STATETAP_PEER_AUTOTUNE``, else ``"first"``): ``"first"`` keeps the
    first config of each autotuned kernel's own list, so no config is benchmarked and a cold
    call compiles each kernel once; ``"full"`` keeps the peers' lists (a cold start then
    compiles every config: minutes). Imports the modules of :data:`FORWARD_KERNELS` and raises
    :class:`PeerUnavailable` if a named kernel is gone or not autotuned. Idempotent. The first
    config is not the one autotuning would pick for a shape: rows timed so carry the mode."""
    mode = mode or os.environ.get("STATETAP_PEER_AUTOTUNE", "first")
    if mode not in ("first", "full"):
        raise ValueError(f"peer autotune mode {mode!r}: expected 'first' or 'full'")
    for module_name, kernels in FORWARD_KERNELS.items():
        if module_name not in sys.modules and module_name.split(".")[0] not in sys.modules:
            continue  # that peer is not in use (not imported) here; a submodule can outlive
            # its package's entry in sys.modules, so both are asked
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # noqa: BLE001
            raise PeerUnavailable(f"{module_name} does not import: {_reason(error)}") from error
        for kernel in kernels:
            if _autotuner(getattr(module, kernel, None)) is None:
                raise PeerUnavailable(
                    f"{module_name}.{kernel} is gone or no longer autotuned: update "
                    "benchmarks/peers.py FORWARD_KERNELS for this version"
                )
    kept = {}
    for name, tuner in autotuned_kernels().items():
        if not hasattr(tuner, "_statetap_configs"):
            tuner._statetap_configs = list(tuner.configs)
        tuner.configs = tuner._statetap_configs[:1] if mode == "first" else tuner._statetap_configs
        if mode == "first":
            kept[name] = str(tuner.configs[0])
    return kept


def segment_ends(positions: Sequence[int], length: int) -> list[int]:
    """Exclusive ends of the segments between emission points ``positions`` (sorted, distinct,
    in ``[0, length)``): a segment ends right after each emitted token, the last one at
    ``length``. ValueError on positions out of range, repeated or unsorted."""
    positions = [int(p) for p in positions]
    if any(b <= a for a, b in zip(positions, positions[1:])):
        raise ValueError(f"emission positions must be sorted and distinct, got {positions}")
    if positions and not 0 <= positions[0] <= positions[-1] < length:
        raise ValueError(f"emission positions must lie in [0, {length}), got {positions}")
    ends = [p + 1 for p in positions]
    return ends if ends and ends[-1] == length else ends + [length]


def chain_segments(run, sequences: dict, constants: dict, ends: Sequence[int], axis: int = 1):
    """Call ``run`` once per segment, chaining each final state into the next call.

    ``run(inputs, initial_state) -> (y, final_state)``, ``inputs`` being ``sequences`` sliced
    along ``axis`` to the segment plus ``constants``; the first call starts from None.
    Returns ``(ys, states)``: each segment's output and final state (the state after its last
    token, i.e. at each emission point, and at the end)."""
    ys, states, start, state = [], [], 0, None
    for end in ends:
        piece = {k: v.narrow(axis, start, end - start) for k, v in sequences.items()}
        y, state = run(piece | constants, state)
        ys.append(y)
        states.append(state)
        start = end
    return ys, states
