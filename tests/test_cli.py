"""``statetap check`` compares every dispatched op and decode step with its references."""

from __future__ import annotations

import re

import pytest
import torch
from transformers.models.mamba import modeling_mamba

from statetap import kernels
from statetap.adapters import upstream
from statetap.check import DEFINITION, STEP_OPS
from statetap.check_references import MAMBA_MODULE, PEERS, torch_function
from statetap.cli import main
from statetap.kernels import OPS, STEPS, examples


def _statuses(table: str) -> dict[tuple[str, str], str]:
    """``(op, reference) -> "ok" / "FAIL"`` from the check table (cells split by 2+ spaces)."""
    rows = [re.split(r"\s{2,}", line) for line in table.splitlines()[1:]]
    return {(cells[0], cells[3]): cells[-1] for cells in rows if len(cells) == 9}


@pytest.mark.parametrize(("batch", "length"), [(3, 9), (1, 1), (2, 17)])
def test_check_passes_for_every_op_and_step(capsys, batch, length):
    assert main(["check", "--batch", str(batch), "--length", str(length)]) == 0
    statuses = _statuses(capsys.readouterr().out)
    expected = {(name, DEFINITION) for name in (*OPS, *STEPS)}
    expected |= {(op, peer.label) for op, peer in PEERS.items()}
    assert set(statuses) == expected
    assert set(statuses.values()) == {"ok"}


def test_every_step_is_checked():
    assert set(STEP_OPS) == set(STEPS)
    assert {op for op, _ in STEP_OPS.values()} <= set(OPS)


def test_check_fails_when_a_backend_is_wrong(monkeypatch, capsys):
    case = examples.CASES["wkv6"]
    right = case.public.implementations["torch"]

    def off_by_a_little(*args, **kwargs):
        out = right(*args, **kwargs)
        return out._replace(y=out.y * (1 + 1e-3))

    monkeypatch.setenv("STATETAP_BACKEND", "torch")  # the backend patched here
    monkeypatch.setitem(case.public.implementations, "torch", off_by_a_little)
    assert main(["check", "--ops", "wkv6", "wkv4", "--length", "5", "--seed", "3"]) == 1
    captured = capsys.readouterr()
    assert "FAILED: wkv6" in captured.err


@pytest.mark.parametrize(("op", "parameter"), [("selective_scan", "A"), ("wkv4", "w")])
def test_check_catches_a_bug_in_the_definition(monkeypatch, capsys, op, parameter):
    """A bug in the definition itself (a decay 1% off) reaches the public op on a CPU and the
    float64 comparison alike, so only the independent reference sees it."""
    case = examples.CASES[op]
    definition = case.forms["sequential"]
    # with the torch backend the public op is its definition: comparing the two cannot see the bug
    monkeypatch.setenv("STATETAP_BACKEND", "torch")
    assert case.public.implementations["torch"] is definition

    def wrong_decay(**inputs):
        inputs[parameter] = inputs[parameter] * 1.01
        return definition(**inputs)

    monkeypatch.setitem(case.forms, "sequential", wrong_decay)
    monkeypatch.setitem(case.public.implementations, "torch", wrong_decay)
    assert main(["check", "--ops", op, "--batch", "3", "--length", "9"]) == 1
    captured = capsys.readouterr()
    assert f"FAILED: {op} " in captured.err
    assert _statuses(captured.out) == {(op, DEFINITION): "ok", (op, PEERS[op].label): "FAIL"}


def _ignores_inject_scale(right):
    def step(*args, inject_scale=None, **kwargs):
        return right(*args, **kwargs)

    return step


def _drifts_the_state(right):
    def step(*args, state, **kwargs):
        out = right(*args, state=state, **kwargs)
        state.mul_(1 + 1e-3)
        return out

    return step


@pytest.mark.parametrize("bug", [_ignores_inject_scale, _drifts_the_state])
@pytest.mark.parametrize("name", STEPS)
def test_check_catches_a_bug_in_a_step(monkeypatch, capsys, name, bug):
    implementations = getattr(kernels, name).implementations
    monkeypatch.setenv("STATETAP_BACKEND", "torch")  # the backend patched here
    monkeypatch.setitem(implementations, "torch", bug(implementations["torch"]))
    assert main(["check", "--ops", name, "--batch", "3", "--length", "6"]) == 1
    captured = capsys.readouterr()
    assert f"FAILED: {name} " in captured.err
    assert _statuses(captured.out) == {(name, DEFINITION): "FAIL"}


def test_peer_is_transformers_torch_code_not_a_kernel(monkeypatch):
    resolved = torch_function(MAMBA_MODULE, "mamba_selective_state_update")
    update = resolved.function
    # the module attribute is a hub-kernel wrapper that may call mamba-ssm's CUDA kernel instead
    # (and from transformers 5.25 a hub-kernel Func module in front of that wrapper)
    assert update is not modeling_mamba.mamba_selective_state_update
    assert update.__code__.co_filename == modeling_mamba.__file__
    assert resolved.route.startswith(f"{MAMBA_MODULE}.mamba_selective_state_update -> ")
    line = update.__code__.co_firstlineno
    assert resolved.route.endswith(f" -> mamba_selective_state_update at modeling_mamba.py:{line}")
    if isinstance(modeling_mamba.mamba_selective_state_update, torch.nn.Module):
        assert " -> hub-kernel module " in resolved.route

    def mamba_selective_state_update(*args, **kwargs):  # e.g. a hub kernel swapped in
        raise AssertionError("must not be called")

    swapped_in = mamba_selective_state_update
    monkeypatch.setattr(modeling_mamba, "mamba_selective_state_update", swapped_in)
    with pytest.raises(RuntimeError, match="not transformers' pure-torch function"):
        torch_function(MAMBA_MODULE, "mamba_selective_state_update")
    with pytest.raises(RuntimeError, match="has no no_such_function"):
        torch_function(MAMBA_MODULE, "no_such_function")


def test_a_peer_that_cannot_be_resolved_is_an_error_row_and_the_check_goes_on(monkeypatch, capsys):
    """A transformers whose peer function is gone (or is not its torch code) fails the check with
    the version and the tested range named, and every other op is still checked."""
    monkeypatch.delattr(modeling_mamba, "mamba_selective_state_update")
    assert main(["check", "--ops", "selective_scan", "wkv4", "--length", "5"]) == 1
    captured = capsys.readouterr()
    assert _statuses(captured.out) == {
        ("selective_scan", DEFINITION): "ok",
        ("selective_scan", PEERS["selective_scan"].label): "ERROR",
        ("wkv4", DEFINITION): "ok",
        ("wkv4", PEERS["wkv4"].label): "ok",
    }
    version = f"transformers {upstream.package_version('transformers')}"
    assert (
        f"ERROR: selective_scan against transformers mamba_selective_state_update: {version} "
        f"({upstream.tested_range()} tested): RuntimeError: {MAMBA_MODULE} has no "
        f"mamba_selective_state_update" in captured.err
    )
    assert "FAILED: selective_scan differ" in captured.err
    assert "wkv4: transformers.models.rwkv.modeling_rwkv.rwkv_linear_attention_cpu -> " in (
        captured.out
    )
