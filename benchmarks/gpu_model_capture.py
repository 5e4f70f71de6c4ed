"""Kernel launches of a Python call, captured instead of launched, with the specialisation
Triton's runtime would compile for an sm_90 GPU (used by ``gpu_model.py``).

Inside :class:`capture`, ``JITFunction.run`` (every ``kernel[grid](...)``) does not launch:
it binds the arguments with Triton's own binder (``create_function_from_signature`` and
``JITFunction._pack_args``, the code a real launch runs) against the CUDA backend for
``GPUTarget("cuda", 90, 32)``, so ints equal to 1 become constexprs, ints that are multiples of
16 and 16-byte aligned pointers get ``tt.divisibility=16``, large ints ``i64``, and
``do_not_specialize`` is honoured exactly as on a GPU. ``Autotuner.run`` records every config
its pruning keeps (``early_config_prune``/``perf_model`` as the autotuner applies them) as
alternatives of one launch, ``Heuristics`` run as usual. Each launch keeps its grid, the
non-tensor argument values and the compulsory bytes of its tensor arguments; no tensor is
kept alive. Tensors may live on the CPU: statetap's ``check_launchable`` and
``torch.cuda.device`` (which mamba-ssm enters) are made no-ops for the duration.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

TARGET_CC = 90


@dataclass
class Alternative:
    """One compilable specialisation of a launch: ``spec`` (an ``_aot.KernelSpec``), the
    ``grid`` it launches with, ``values`` (every non-tensor argument, constexprs included),
    ``config`` (the autotune config's keyword arguments, or the launch's warps and stages)."""

    spec: Any
    grid: tuple[int, int, int]
    values: dict[str, Any]
    config: str


@dataclass
class Launch:
    """One ``kernel[grid](...)`` call: ``kernel`` name, the ``fn`` (JITFunction), ``bytes``
    (compulsory traffic of its tensor arguments: each argument's memory extent once, overlapping
    extents merged), ``alternatives`` (one, or one per autotune config kept)."""

    kernel: str
    fn: Any
    bytes: int
    alternatives: list[Alternative] = field(default_factory=list)


def extent_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the memory the tensors can address (a broadcast view counts its storage once),
    overlapping ranges merged."""
    ranges = []
    for t in tensors:
        if t.numel() == 0:
            continue
        span = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
        start = t.data_ptr()
        ranges.append((start, start + span * t.element_size()))
    ranges.sort()
    total, end = 0, None
    for lo, hi in ranges:
        if end is None or lo >= end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return total


def _grid(grid: Any, meta: dict[str, Any]) -> tuple[int, int, int]:
    g = grid(meta) if callable(grid) else grid
    g = tuple(int(x) for x in g)
    if not 1 <= len(g) <= 3:
        raise ValueError(f"grid must have 1 to 3 dimensions, got {g}")
    return (*g, *(1,) * (3 - len(g)))


class capture(contextlib.AbstractContextManager):
    """Record Triton launches instead of running them; ``launches`` after the block.

    Example::

        with capture() as cap:
            selective_scan_triton(u, delta, A, B, C)
        for launch in cap.launches:
            print(launch.kernel, launch.alternatives[0].grid)
    """

    def __init__(self) -> None:
        self.launches: list[Launch] = []
        self._group: list[Alternative] | None = None
        self._config: str = ""
        self._restore: list[tuple[Any, str, Any]] = []

    # -- patching ------------------------------------------------------------------------------

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._restore.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def __enter__(self) -> capture:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime import autotuner, jit

        from statetap.kernels import _triton

        if _triton.INTERPRETING:
            raise RuntimeError(
                "capture needs real @triton.jit kernels: run with TRITON_INTERPRET unset or 0"
            )
        backend = make_backend(GPUTarget("cuda", TARGET_CC, 32))
        cap = self

        def jit_run(fn, *args, grid, warmup, **kwargs):
            cap._record(fn, backend, jit, args, kwargs, grid)

        def autotune_run(tuner, *args, **kwargs):
            tuner.nargs = dict(zip(tuner.arg_names, args))
            configs = tuner.prune_configs(kwargs) if len(tuner.configs) > 1 else tuner.configs
            outer = cap._group is None
            if outer:
                cap._group = []
            for config in configs:
                cap._config = " ".join(
                    f"{k}={v}" for k, v in config.all_kwargs().items() if v is not None
                )
                tuner.fn.run(*args, **kwargs, **config.all_kwargs())
            tuner.nargs, cap._config = None, ""
            if outer:
                group, cap._group = cap._group, None
                cap.launches[-1].alternatives = group  # the launch the first config created

        class _no_device(contextlib.nullcontext):
            def __init__(self, *_a, **_k):
                super().__init__()

        self._patch(jit.JITFunction, "run", jit_run)
        self._patch(autotuner.Autotuner, "run", autotune_run)
        self._patch(_triton, "check_launchable", lambda device, op: None)
        self._patch(torch.cuda, "device", _no_device)
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, value in reversed(self._restore):
            setattr(owner, name, value)
        self._restore.clear()

    # -- one launch ----------------------------------------------------------------------------

    def _record(self, fn, backend, jit, args, kwargs, grid) -> None:
        from statetap.kernels._aot import KernelSpec

        binder = jit.create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(
            backend, kwargs, bound, specialization, options
        )
        names = [p.name for p in fn.params]
        consts, aligned = {}, []
        for path, value in constexprs.items():
            if len(path) != 1:
                raise ValueError(f"{fn.__name__}: tuple arguments are not supported ({path})")
            consts[names[path[0]]] = value
        for path, attr in attrs.items():
            if len(path) != 1:
                raise ValueError(f"{fn.__name__}: tuple arguments are not supported ({path})")
            kinds = {a[0] for a in attr}
            if kinds - {"tt.divisibility"}:
                raise ValueError(f"{fn.__name__}: unexpected specialisation attributes {attr}")
            if kinds:
                aligned.append(names[path[0]])
        extra = {
            k: v
            for k, v in kwargs.items()
            if k not in names
            and k not in ("num_warps", "num_stages", "debug")
            and not k.startswith("instrumentation")
            and v is not None
        }
        spec = KernelSpec(
            fn=fn,
            signature={n: t for n, t in signature.items() if t != "constexpr"},
            constexprs=consts,
            num_warps=options.num_warps,
            num_stages=options.num_stages,
            options=extra,
            aligned=aligned,
        )
        values = {k: v for k, v in bound.items() if not isinstance(v, torch.Tensor)}
        tensors = [v for v in bound.values() if isinstance(v, torch.Tensor)]
        meta = dict(bound)
        alt = Alternative(
            spec=spec,
            grid=_grid(grid, meta),
            values=values,
            config=self._config or f"num_warps={options.num_warps} num_stages={options.num_stages}",
        )
        if self._group is not None and self._group:
            self._group.append(alt)
            return
        launch = Launch(kernel=fn.__name__, fn=fn, bytes=extent_bytes(tensors), alternatives=[alt])
        self.launches.append(launch)
        if self._group is not None:
            self._group.append(alt)
