"""The cpu backend splits its rows and heads over threads (``at::parallel_for``): every op gives
the same outputs with two threads as with one, bit for bit, and both equal the float64
definition.  The suite's xdist workers run torch on one thread each (tests/conftest.py), so this
module is where the split over threads runs."""

from __future__ import annotations

import pytest
import torch

from statetap.kernels.examples import CASES, rel_error

#: sizes at which each op's call holds several times csrc/isa.h's kParallelWork (2^15 state
#: updates), the least work that is split over threads
SIZES = {
    "selective_scan": dict(D=64, N=16),
    "ssd": dict(H=4, P=64, N=32),
    "wkv4": dict(C=1024),
    "wkv5": dict(H=2, K=32, V=32),
    "wkv6": dict(H=2, K=32, V=32),
    "wkv7": dict(H=2, K=32, V=32),
    "delta_rule": dict(HK=2, HV=4, K=32, V=16),
}


@pytest.mark.parametrize("name", list(SIZES))
def test_two_threads_give_the_one_thread_result(name, monkeypatch):
    monkeypatch.setenv("STATETAP_BACKEND", "cpu")
    case = CASES[name]
    inputs = case.make(5, 37, **SIZES[name])
    instrumentation = dict(output_final_state=True, emit_at=torch.tensor([0, 17, 36]))
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(case.call("public", inputs, **instrumentation))
    finally:
        torch.set_num_threads(before)
    assert set(SIZES) == set(CASES), "every op has its sizes"
    one, two = runs
    for field in ("y", "final_state", "states"):
        assert torch.equal(getattr(one, field), getattr(two, field)), field
    double = {
        k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in inputs.items()
    }
    definition = case.call("sequential", double, **instrumentation)
    assert rel_error(definition.y, two.y) <= 1e-5
    assert rel_error(definition.states, two.states) <= 1e-5
