"""Ahead-of-time compilation of Triton kernels for real GPU targets, with no GPU present.

Each kernel specialisation is compiled with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", cc, 32))`` for every compute capability asked for (sm_80 and sm_90 by
default), and ``ptxas -v`` is run on the resulting PTX to read registers, spills, stack and
shared memory. CI uses this to fail on kernels that do not compile or that spill.

Example::

    from statetap.kernels import _aot

    stats = _aot.compile_kernel(
        my_kernel,
        {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"},
        {"BLOCK": 1024},
        num_warps=4,
        num_stages=2,
    )
    print(_aot.format_table(stats))
    _aot.assert_no_spills(stats)

Under ``TRITON_INTERPRET=1`` (the test suite), ``@triton.jit`` produces interpreter objects that
cannot be compiled; the kernels are then compiled in one child Python process with the
interpreter off, which re-imports each kernel's module by name. Such kernels must be defined at
module level. Compiled kernels go to Triton's usual cache, so repeated runs are fast.

ptxas: the one Triton itself assembles with for that target (bundled in
``triton/backends/nvidia/bin``, or ``TRITON_PTXAS_PATH``), so the numbers are those of the cubin
Triton would load; it always accepts the PTX ISA version Triton emits. If it fails, the other
bundled ptxas and then the one on ``PATH`` are tried. Its version is recorded in each result.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_TARGETS",
    "SHARED_MEMORY_LIMIT",
    "KernelSpec",
    "KernelStats",
    "PtxasInfo",
    "assert_no_spills",
    "assert_shared_fits",
    "compile_kernel",
    "compile_specs",
    "find_ptxas",
    "format_table",
    "parse_ptxas_output",
]

DEFAULT_TARGETS: tuple[int, ...] = (80, 90)

#: Largest shared memory one block may use (bytes, opt-in maximum) per compute capability.
SHARED_MEMORY_LIMIT: dict[int, int] = {
    75: 65536,
    80: 166912,
    86: 101376,
    87: 166912,
    89: 101376,
    90: 232448,
    100: 232448,
    120: 101376,
}

_TRUTHY = {"1", "true", "yes", "on", "y"}


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class PtxasInfo:
    """Resource usage ptxas reports for one function (sizes in bytes)."""

    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    shared: int = 0


@dataclass(frozen=True)
class KernelStats:
    """Resource usage of one kernel specialisation compiled for one target.

    Attributes:
        kernel: entry name of the compiled kernel.
        specialisation: constexpr values and launch options, e.g.
            ``"HAS_INITIAL=True BLOCK=256 | warps=4 stages=2"``.
        cc: compute capability compiled for (80, 90, ...).
        target: ptxas GPU name, read from the PTX ``.target`` line (``sm_80``, ``sm_90a``).
        registers: registers per thread.
        spill_stores, spill_loads: bytes spilled to local memory per thread.
        stack: stack frame bytes per thread.
        shared: shared memory per block in bytes (Triton's dynamic allocation + static).
        num_warps: warps per block.
        ptxas: version of the ptxas that produced these numbers, e.g. ``"13.0"``.
        sass: the cubin's SASS (``nvdisasm -c``, see ``_sass.py``) when asked for with
            ``compile_specs(..., sass=True)``; empty otherwise.
    """

    kernel: str
    specialisation: str
    cc: int
    target: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int
    num_warps: int
    ptxas: str
    sass: str = field(default="", repr=False, compare=False)

    @property
    def spills(self) -> bool:
        """True when ptxas spilled any register to local memory."""
        return self.spill_stores > 0 or self.spill_loads > 0


@dataclass(frozen=True)
class KernelSpec:
    """One specialisation of a ``@triton.jit`` kernel to compile.

    Attributes:
        fn: the ``@triton.jit`` function (``@triton.heuristics``/``@triton.autotune`` wrappers
            are unwrapped).
        signature: argument name -> Triton type string, e.g. ``{"x_ptr": "*fp32", "n": "i32",
            "BLOCK": "constexpr"}``. Every non-constexpr argument must be present; constexpr
            arguments may be given here as ``"constexpr"`` or only in ``constexprs``.
        constexprs: constexpr argument name -> value (ints, bools, floats, ``tl.dtype``s, jit
            functions).
        num_warps, num_stages: launch options as in a kernel launch.
        options: further Triton compile options, e.g. ``{"maxnreg": 128}``.
        aligned: arguments to specialise as 16-byte/16-element divisible, like the runtime
            does for aligned tensors and multiples of 16. Default: every pointer argument.
        label: text for the specialisation column; default: the constexprs and options.
    """

    fn: Any
    signature: Mapping[str, str]
    constexprs: Mapping[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    options: Mapping[str, Any] = field(default_factory=dict)
    aligned: Sequence[str] | None = None
    label: str | None = None


# --------------------------------------------------------------------------------------------
# ptxas


def _triton_ptxas(cc: int) -> list[str]:
    """The ptxas Triton itself assembles with for ``cc`` (honours ``TRITON_PTXAS_PATH``)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(cc).path
    except Exception:  # older/newer Triton without this helper, or no NVIDIA backend
        return []
    return [path] if path and os.access(path, os.X_OK) else []


def _bundled_ptxas() -> list[str]:
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return []
    paths = [
        os.path.join(base, "backends", "nvidia", "bin", name)
        for base in spec.submodule_search_locations
        for name in ("ptxas", "ptxas-blackwell")
    ]
    return [p for p in paths if os.access(p, os.X_OK)]


def _ptxas_candidates(cc: int, ptxas: str | None = None) -> list[str]:
    if ptxas is not None:
        return [ptxas]
    unique: dict[str, str] = {}
    for p in _triton_ptxas(cc) + _bundled_ptxas() + [p for p in [shutil.which("ptxas")] if p]:
        unique.setdefault(os.path.realpath(p), p)
    return list(unique.values())


def find_ptxas(cc: int = 80) -> str:
    """Path of the ptxas tried first for compute capability ``cc``.

    The one Triton itself uses for ``cc`` (bundled in ``triton/backends/nvidia/bin``, or
    ``TRITON_PTXAS_PATH``), so the numbers match the cubin Triton builds; then the other bundled
    one; then ``ptxas`` on ``PATH``. Raises ``RuntimeError`` when there is none.
    """
    candidates = _ptxas_candidates(cc)
    if not candidates:
        raise RuntimeError(
            "no ptxas found: none bundled with triton (triton/backends/nvidia/bin) and none on "
            "PATH; install triton on Linux or a CUDA toolkit"
        )
    return candidates[0]


@functools.cache
def _ptxas_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else "?"


_RE_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_RE_PROPS = re.compile(r"Function properties for (\S+)")
_RE_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_RE_USED = re.compile(r"Used (\d+) registers")
_RE_SMEM = re.compile(r"(\d+) bytes smem")
_RE_SPILL_WARN = re.compile(
    r"Registers are spilled to local memory in function '([^']+)', "
    r"(\d+) bytes spill stores, (\d+) bytes spill loads"
)


def parse_ptxas_output(text: str) -> dict[str, PtxasInfo]:
    """Parse the output of ``ptxas -v`` into ``{function name: PtxasInfo}``.

    Understands the ``Compiling entry function``, ``Function properties``, ``N bytes stack
    frame, N bytes spill stores, N bytes spill loads``, ``Used N registers ... N bytes smem``
    lines and the ``Registers are spilled`` warning. Device functions that were not inlined get
    their own entries (with spills but no register count).
    """
    info: dict[str, dict[str, int]] = {}
    entry: str | None = None
    props: str | None = None
    for line in text.splitlines():
        if m := _RE_ENTRY.search(line):
            entry = props = m.group(1)
            info.setdefault(entry, {})
            continue
        if m := _RE_PROPS.search(line):
            props = m.group(1)
            info.setdefault(props, {})
            continue
        if m := _RE_SPILL_WARN.search(line):
            d = info.setdefault(m.group(1), {})
            d["spill_stores"] = max(d.get("spill_stores", 0), int(m.group(2)))
            d["spill_loads"] = max(d.get("spill_loads", 0), int(m.group(3)))
            continue
        if (m := _RE_FRAME.search(line)) and props is not None:
            d = info[props]
            d["stack"] = int(m.group(1))
            d["spill_stores"] = max(d.get("spill_stores", 0), int(m.group(2)))
            d["spill_loads"] = max(d.get("spill_loads", 0), int(m.group(3)))
            continue
        if (m := _RE_USED.search(line)) and entry is not None:
            d = info[entry]
            d["registers"] = int(m.group(1))
            if s := _RE_SMEM.search(line):
                d["shared"] = int(s.group(1))
    return {name: PtxasInfo(**d) for name, d in info.items()}


def _ptx_target(ptx: str) -> str:
    m = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, flags=re.MULTILINE)
    if not m:
        raise RuntimeError("PTX has no '.target sm_XX' line")
    return m.group(1)


def _run_ptxas(ptx: str, cc: int, ptxas: str | None) -> tuple[str, str, str]:
    """Assemble ``ptx``; return (ptxas -v output, ptxas version, gpu name)."""
    gpu = _ptx_target(ptx)
    candidates = _ptxas_candidates(cc, ptxas)
    if not candidates:
        find_ptxas(cc)  # raises with the explanation
    failures = []
    with tempfile.TemporaryDirectory(prefix="statetap-aot-") as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        for exe in candidates:
            cmd = [exe, "-v", f"--gpu-name={gpu}", src, "-o", os.path.join(tmp, "kernel.cubin")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                return proc.stdout + proc.stderr, _ptxas_version(exe), gpu
            failures.append(f"$ {' '.join(cmd)}\n(exit {proc.returncode})\n{proc.stderr.strip()}")
    raise RuntimeError("ptxas could not assemble the PTX:\n" + "\n\n".join(failures))


# --------------------------------------------------------------------------------------------
# compilation


def _is_truthy_env(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in _TRUTHY


def _unwrap(fn: Any) -> Any:
    """Peel ``@triton.autotune``/``@triton.heuristics`` wrappers off a jit function."""
    from triton.runtime.jit import JITFunction

    seen = 0
    while not isinstance(fn, JITFunction) and type(fn).__name__ != "InterpretedFunction":
        inner = getattr(fn, "fn", None)
        if inner is None or seen > 16:
            raise TypeError(f"expected a @triton.jit function, got {type(fn).__name__}: {fn!r}")
        fn, seen = inner, seen + 1
    return fn


def _raw_function(fn: Any) -> Any:
    """The plain Python function under any number of Triton wrappers."""
    seen = 0
    while hasattr(fn, "fn") and seen < 16:
        fn, seen = fn.fn, seen + 1
    return fn


def _arg_names(fn: Any) -> list[str]:
    import inspect

    return list(inspect.signature(_raw_function(fn)).parameters)


def _normalise(spec: KernelSpec) -> tuple[dict[str, str], dict[str, Any], dict]:
    """Signature in argument order with constexprs, constexpr values, alignment attrs."""
    names = _arg_names(spec.fn)
    kname = _raw_function(spec.fn).__name__
    sig = dict(spec.signature)
    constexprs = dict(spec.constexprs)
    unknown = sorted((set(sig) | set(constexprs)) - set(names))
    if unknown:
        raise ValueError(f"{kname}: unknown arguments {unknown}; it takes {names}")
    for name in constexprs:
        if sig.setdefault(name, "constexpr") != "constexpr":
            raise ValueError(
                f"{kname}: {name!r} is given a constexpr value but typed {sig[name]!r}"
            )
    missing = [n for n in names if n not in sig]
    if missing:
        raise ValueError(f"{kname}: signature lacks arguments {missing}")
    no_value = [n for n in names if sig[n] == "constexpr" and n not in constexprs]
    if no_value:
        raise ValueError(f"{kname}: constexpr arguments without a value: {no_value}")
    signature = {n: sig[n] for n in names}

    aligned = (
        [n for n, t in signature.items() if t.startswith("*")]
        if spec.aligned is None
        else list(spec.aligned)
    )
    bad = [n for n in aligned if signature.get(n, "constexpr") == "constexpr"]
    if bad:
        raise ValueError(f"{kname}: cannot mark {bad} as aligned (not runtime args)")
    try:
        from triton.backends.compiler import BaseBackend

        divisible = BaseBackend.parse_attr("D")
    except (ImportError, AttributeError):
        divisible = [["tt.divisibility", 16]]
    attrs = {(names.index(n),): divisible for n in aligned}
    return signature, constexprs, attrs


def _label(spec: KernelSpec, signature: Mapping[str, str]) -> str:
    if spec.label is not None:
        return spec.label

    def show(v: Any) -> str:
        return getattr(v, "__name__", None) or str(v)

    consts = " ".join(f"{n}={show(spec.constexprs[n])}" for n in signature if n in spec.constexprs)
    opts = [f"warps={spec.num_warps}", f"stages={spec.num_stages}"]
    opts += [f"{k}={v}" for k, v in sorted(spec.options.items())]
    return f"{consts} | {' '.join(opts)}" if consts else " ".join(opts)


def _compile_one(spec: KernelSpec, cc: int, ptxas: str | None, sass: bool = False) -> KernelStats:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _unwrap(spec.fn)
    signature, constexprs, attrs = _normalise(spec)
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages, **spec.options}
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
    except Exception as e:
        raise RuntimeError(
            f"triton could not compile {fn.__name__} [{_label(spec, signature)}] for sm_{cc}: "
            f"{type(e).__name__}: {e}"
        ) from e
    ptx = compiled.asm["ptx"]
    name = getattr(compiled.metadata, "name", fn.__name__)
    log, version, gpu = _run_ptxas(ptx, cc, ptxas)
    parsed = parse_ptxas_output(log)
    if name not in parsed:
        raise RuntimeError(f"ptxas output has no entry for {name!r}:\n{log}")
    info = parsed[name]
    text = ""
    if sass:
        from statetap.kernels._sass import disassemble  # absolute: the child runs this file

        text = disassemble(compiled.asm["cubin"])
    return KernelStats(
        kernel=name,
        specialisation=_label(spec, signature),
        cc=cc,
        target=gpu,
        registers=info.registers,
        spill_stores=info.spill_stores,
        spill_loads=info.spill_loads,
        stack=info.stack,
        shared=int(getattr(compiled.metadata, "shared", 0) or 0) + info.shared,
        num_warps=spec.num_warps,
        ptxas=version,
        sass=text,
    )


def _compile_in_process(
    specs: Sequence[KernelSpec], targets: Sequence[int], ptxas: str | None, sass: bool = False
) -> list[KernelStats]:
    return [_compile_one(spec, cc, ptxas, sass) for spec in specs for cc in targets]


# -- child process (used when this process runs Triton's interpreter) -------------------------


def _module_ref(fn: Any) -> tuple[str, str | None, str]:
    raw = _raw_function(fn)
    modname, qualname = raw.__module__, raw.__qualname__
    if "<locals>" in qualname:
        raise ValueError(
            f"{qualname}: a kernel defined inside a function cannot be re-imported for "
            "ahead-of-time compilation under TRITON_INTERPRET=1; define it at module level"
        )
    module = sys.modules.get(modname)
    path = getattr(module, "__file__", None)
    return modname, path, qualname


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        try:
            from triton.runtime.jit import KernelInterface
        except ImportError:  # pragma: no cover
            return None
        if isinstance(obj, KernelInterface):
            return ("triton-fn", *_module_ref(obj))
        return None


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        kind, modname, path, qualname = pid
        if kind != "triton-fn":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        module = None
        if modname != "__main__":
            try:
                module = importlib.import_module(modname)
            except ImportError:
                if not path:
                    raise
        if module is None:  # e.g. a script, or a test file imported outside sys.path
            alias = "_statetap_aot_" + re.sub(r"\W", "_", modname)
            if alias not in sys.modules:
                file_spec = importlib.util.spec_from_file_location(alias, path)
                module = importlib.util.module_from_spec(file_spec)
                sys.modules[alias] = module
                file_spec.loader.exec_module(module)
            module = sys.modules[alias]
        obj: Any = module
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj


def _compile_in_child(
    specs: Sequence[KernelSpec], targets: Sequence[int], ptxas: str | None, sass: bool = False
) -> list[KernelStats]:
    buf = io.BytesIO()
    # First the parent's sys.path, made absolute (so kernel modules and test files import by the
    # same names), then the jobs; jit functions travel as (module, file, qualname) references.
    pickle.dump([os.path.abspath(p) for p in sys.path], buf)
    jobs = [{f.name: getattr(s, f.name) for f in dataclasses.fields(KernelSpec)} for s in specs]
    _Pickler(buf).dump((jobs, list(targets), ptxas, sass))
    # PYTHONSAFEPATH and a neutral cwd: nothing of the script's folder (kernels/) or the cwd on
    # sys.path before the parent's path replaces it.
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONSAFEPATH="1")
    with tempfile.TemporaryDirectory(prefix="statetap-aot-") as tmp:
        out = os.path.join(tmp, "out.pkl")
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), out],
            input=buf.getvalue(),
            capture_output=True,
            env=env,
            cwd=tmp,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                "ahead-of-time compilation failed (child process, TRITON_INTERPRET=0):\n"
                + proc.stderr.decode(errors="replace").strip()
            )
        with open(out, "rb") as f:
            rows = pickle.load(f)
    return [KernelStats(**row) for row in rows]


def _child_main(out_path: str) -> int:
    try:
        stream = io.BytesIO(sys.stdin.buffer.read())
        sys.path[:] = pickle.load(stream)
        jobs, targets, ptxas, sass = _Unpickler(stream).load()
        specs = [KernelSpec(**job) for job in jobs]
        stats = _compile_in_process(specs, targets, ptxas, sass)
    except Exception:
        traceback.print_exc()
        return 1
    with open(out_path, "wb") as f:
        pickle.dump([dataclasses.asdict(s) for s in stats], f)
    return 0


# -- public entry points ----------------------------------------------------------------------


def compile_specs(
    specs: Iterable[KernelSpec],
    targets: Sequence[int] = DEFAULT_TARGETS,
    *,
    ptxas: str | None = None,
    subprocess_mode: bool | None = None,
    sass: bool = False,
) -> list[KernelStats]:
    """Compile every spec for every target; return one ``KernelStats`` per (spec, target).

    Args:
        specs: the kernel specialisations (see ``KernelSpec``).
        targets: CUDA compute capabilities, default ``(80, 90)``.
        ptxas: path of the ptxas to use; default: see ``find_ptxas``.
        subprocess_mode: compile in a child process with the interpreter off. Default: when
            ``TRITON_INTERPRET`` is set or any kernel is an interpreter object.
        sass: also disassemble each cubin into ``KernelStats.sass`` (needs ``nvdisasm``).

    Raises:
        RuntimeError: a kernel does not compile or ptxas fails; ``ValueError`` for a
        signature/constexpr mismatch.
    """
    specs = list(specs)
    targets = [int(cc) for cc in targets]
    if subprocess_mode is None:
        subprocess_mode = _is_truthy_env("TRITON_INTERPRET") or any(
            type(_unwrap(s.fn)).__name__ == "InterpretedFunction" for s in specs
        )
    for s in specs:  # validate in the caller's process, for clear errors
        _normalise(s)
    if subprocess_mode:
        return _compile_in_child(specs, targets, ptxas, sass)
    return _compile_in_process(specs, targets, ptxas, sass)


def compile_kernel(
    fn: Any,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any] | None = None,
    *,
    num_warps: int = 4,
    num_stages: int = 3,
    targets: Sequence[int] = DEFAULT_TARGETS,
    options: Mapping[str, Any] | None = None,
    aligned: Sequence[str] | None = None,
    ptxas: str | None = None,
) -> list[KernelStats]:
    """Compile one specialisation of ``fn`` for each target; see ``KernelSpec`` for the args.

    Returns one ``KernelStats`` per target, in the order of ``targets``.
    """
    spec = KernelSpec(
        fn=fn,
        signature=signature,
        constexprs=dict(constexprs or {}),
        num_warps=num_warps,
        num_stages=num_stages,
        options=dict(options or {}),
        aligned=aligned,
    )
    return compile_specs([spec], targets, ptxas=ptxas)


def assert_no_spills(stats: Iterable[KernelStats]) -> None:
    """Raise ``AssertionError`` listing every result that spills registers to local memory."""
    bad = [s for s in stats if s.spills]
    if bad:
        raise AssertionError("register spills (bytes per thread):\n" + format_table(bad))


def assert_shared_fits(stats: Iterable[KernelStats]) -> None:
    """Raise ``AssertionError`` for results whose shared memory exceeds the target's maximum."""
    bad = [s for s in stats if s.cc in SHARED_MEMORY_LIMIT and s.shared > SHARED_MEMORY_LIMIT[s.cc]]
    if bad:
        limits = ", ".join(f"sm_{s.cc}: {SHARED_MEMORY_LIMIT[s.cc]} B" for s in bad)
        raise AssertionError(f"shared memory over the limit ({limits}):\n" + format_table(bad))


def format_table(stats: Iterable[KernelStats]) -> str:
    """Render results as a text table: kernel, specialisation, sm, regs, spills, smem."""
    header = ("kernel", "specialisation", "sm", "regs", "spills st/ld B", "smem B", "ptxas")
    rows = [
        (
            s.kernel,
            s.specialisation,
            s.target,
            str(s.registers),
            f"{s.spill_stores}/{s.spill_loads}",
            str(s.shared),
            s.ptxas,
        )
        for s in stats
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {3, 4, 5}

    def fmt(row: Sequence[str]) -> str:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *map(fmt, rows)])


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
