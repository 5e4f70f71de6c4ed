"""Test-suite set-up shared by every test module.

Triton kernels run under the CPU interpreter unless the environment says otherwise. The flag must
be set before any kernel module is imported (``@triton.jit`` reads it when it decorates), so it
comes first. On a GPU machine run ``TRITON_INTERPRET=0 pytest -m gpu`` to test the compiled kernels.
"""

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

# pytest-xdist runs one worker process per core: each worker's torch takes its share of the cores
# (one thread each on the 2-core CI machine). Left at its default, every worker starts a thread
# per core, the OpenMP threads of the two workers oversubscribe the cores, and model-heavy test
# files ran 4x slower. Set before torch is imported; an explicit OMP_NUM_THREADS wins.
# tests/test_cpu_threads.py runs the cpu kernels' split over threads itself.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

# `python -m pytest` from the repository root puts the root on sys.path, where our `kernels/` and
# `interp/` folders would pass for top-level packages (transformers imports any `kernels` it
# finds). The package is installed as `statetap`, so the root itself is never needed.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]

import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when no CUDA device is available."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_seed() -> int:
    """Seed torch afresh for every test (torch's default seed is fixed), so each run draws new
    random inputs; the seed is printed and shows up with a failure. Reproduce a failure with
    ``STATETAP_TEST_SEED=<seed>``."""
    import torch

    seed = int(os.environ.get("STATETAP_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    torch.manual_seed(seed)
    print(f"STATETAP_TEST_SEED={seed}")
    return seed
