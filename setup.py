"""Build script for statetap.

Everything installs under the one import name ``statetap``:

    statetap/  -> statetap
    kernels/   -> statetap.kernels   (and every sub-package: kernels/wkv6 -> statetap.kernels.wkv6)
    interp/    -> statetap.interp

Nothing named ``kernels`` or ``interp`` is installed at top level (``kernels`` is a real PyPI
package that transformers imports).

The C++ extension ``statetap._C`` is built from ``csrc/*.cpp`` (with ninja, one object per file:
only changed files are recompiled) only when those sources exist and a C++ compiler is on PATH
(``STATETAP_NO_EXTENSION=1`` skips it: CPU tensors then run the torch references);
``csrc/*.cu`` join it (as a CUDAExtension) only when the installed torch is a CUDA build and a
CUDA toolkit is found.  With no sources, no extension is built and torch is not even imported
here.

Install with ``pip install --no-build-isolation -e ".[dev]"`` (torch must already be installed:
a build-isolated environment would pull a multi-GB CUDA torch, or none at all).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# folder in the repository -> dotted package name it installs as
PACKAGE_ROOTS = {
    "statetap": "statetap",
    "kernels": "statetap.kernels",
    "interp": "statetap.interp",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for folder, name in PACKAGE_ROOTS.items():
        package_dir[name] = folder
        packages.append(name)
        subpackages = sorted(find_packages(os.path.join(ROOT, folder)))
        packages.extend(f"{name}.{sub}" for sub in subpackages)
    return packages, package_dir


def _has_cxx() -> bool:
    cxx = os.environ.get("CXX")
    candidates = [cxx.split()[0]] if cxx else ["c++", "g++", "clang++"]
    return any(shutil.which(c) for c in candidates)


def _rel_sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", pattern)))


def _cuda_include_dirs() -> list[str]:
    """Header folders of the pip-installed CUDA libraries (nvidia/*/include), if any."""
    dirs: list[str] = []
    for entry in sys.path:
        nvidia = os.path.join(entry, "nvidia")
        if os.path.isdir(nvidia):
            dirs.extend(sorted(glob.glob(os.path.join(nvidia, "*", "include"))))
    return dirs


def _extensions() -> tuple[list, dict]:
    cpp = _rel_sources("*.cpp")
    cu = _rel_sources("*.cu")
    if os.environ.get("STATETAP_NO_EXTENSION", "") not in ("", "0"):
        print("statetap: STATETAP_NO_EXTENSION is set; skipping statetap._C", file=sys.stderr)
        return [], {}
    if not cpp or not _has_cxx():
        if cpp:
            print("statetap: no C++ compiler found; skipping statetap._C", file=sys.stderr)
        return [], {}

    import torch  # only needed when there is something to compile
    from torch.utils import cpp_extension

    # Portable: nothing machine-specific (no -march=native). The kernels pick AVX-512, AVX2+FMA
    # or scalar code at run time (csrc/isa.h); -ffp-contract=fast lets `a * b + c` become one
    # FMA inside the functions built for an ISA that has it. -fopenmp: at::parallel_for's
    # OpenMP backend (the same libgomp.so.1 torch loads).
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-Wno-psabi"]
    link_flags = ["-fopenmp"]
    # torch builds with ninja (incremental, parallel) when `ninja` is on PATH; pip does not put
    # the environment's own bin/ (where the ninja package installs it) there.
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    use_cuda = bool(cu) and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = cpp_extension.CUDAExtension(
            "statetap._C",
            cpp + cu,
            include_dirs=_cuda_include_dirs(),
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link_flags,
        )
    else:
        if cu:
            print(
                "statetap: torch has no CUDA or CUDA_HOME is unset; building CPU sources only",
                file=sys.stderr,
            )
        ext = cpp_extension.CppExtension(
            "statetap._C",
            cpp,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )

    class BuildExtension(cpp_extension.BuildExtension):
        """torch's ninja build with a fixed object folder: pip builds in a fresh temporary folder
        each time, and ninja then recompiles only the sources that changed since the last build."""

        def finalize_options(self):
            super().finalize_options()
            self.build_temp = os.path.join(ROOT, "build", "statetap._C")

    return [ext], {"build_ext": BuildExtension}


def _version() -> str:
    with open(os.path.join(ROOT, "statetap", "__init__.py"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("statetap/__init__.py defines no __version__")


def _long_description() -> str:
    path = os.path.join(ROOT, "README.md")
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


packages, package_dir = _packages()
ext_modules, cmdclass = _extensions()

setup(
    name="statetap",
    version=_version(),
    description="Instrumented recurrence kernels (emit/inject recurrent state) for Mamba and RWKV",
    long_description=_long_description(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # Ranges for library users; the exact tested set is the lock, constraints.txt (bootstrap.sh
    # installs with it). Each upper bound is the newest version tested, i.e. the locked one: move
    # it when the lock moves (scripts/lock.sh, after `make upgrade-check` passes).
    # torch and triton get lower bounds only: an upper bound would let pip replace a user's own
    # torch (a CUDA build, say) with one it resolves itself -- a multi-GB CUDA download.
    install_requires=[
        "torch>=2.4",
        'triton>=3.0; platform_system == "Linux"',
        "transformers>=5.23,<=5.25.0",  # statetap supports transformers 5.23.0 to 5.25.0
        "concept-erasure<=0.2.4",
        "datasets<=5.2.0",
        "matplotlib<=3.11.2",
        "numpy<=2.4.6",
        "peft<=0.21.2",
        "safetensors<=0.8.0",
        "tqdm<=4.70.1",
    ],
    extras_require={
        "dev": [
            "pytest<=9.2.0",
            "pytest-benchmark<=5.3.1",
            "pytest-xdist<=3.8.0",
            "hypothesis<=6.170.17",
            "ruff<=0.17.6",
            # mamba-ssm's python package (its adapter's tests); bootstrap.sh installs it
            "einops<=0.8.2",
            "packaging<=26.4",
            # peers' pure-python references: fla's naive RWKV recurrences, BlinkDL's rwkv package
            "fla-core<=0.6.0",
            "rwkv<=0.8.32",
            # builds statetap._C incrementally
            "ninja<=1.13.2",
        ],
        "mamba": ["mamba-ssm<=2.3.2.post1"],
        "fla": ["flash-linear-attention"],
    },
    entry_points={"console_scripts": ["statetap = statetap.cli:main"]},
    zip_safe=False,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
