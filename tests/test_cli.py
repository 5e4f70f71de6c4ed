"""``statetap check`` compares every dispatched op with its float64 definition."""

from __future__ import annotations

from statetap.cli import main
from statetap.kernels import OPS, examples


def test_check_passes_for_every_op(capsys):
    assert main(["check", "--batch", "3", "--length", "9"]) == 0
    table = capsys.readouterr().out
    for op in OPS:
        assert f"\n{op} " in table
    assert "FAIL" not in table


def test_check_fails_when_a_backend_is_wrong(monkeypatch, capsys):
    case = examples.CASES["wkv6"]
    right = case.public.implementations["torch"]

    def off_by_a_little(*args, **kwargs):
        out = right(*args, **kwargs)
        return out._replace(y=out.y * (1 + 1e-3))

    monkeypatch.setitem(case.public.implementations, "torch", off_by_a_little)
    assert main(["check", "--ops", "wkv6", "wkv4", "--length", "5", "--seed", "3"]) == 1
    captured = capsys.readouterr()
    assert "FAILED: wkv6" in captured.err
