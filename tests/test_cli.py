"""``statetap check`` compares every dispatched op and decode step with its references; the
command line tells a usage error in one line, before any model loads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

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


# --- usage errors: told in one line, before any model loads ---------------------------------


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    """Loading any model fails the test; the working folder is a fresh one holding ``models/``
    (so that ``models/x`` looks local), a JSONL with a ``text`` column and a bad A/B file."""
    import statetap.defaults
    from statetap import zoo

    def loads(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for module, name in ((statetap.defaults, "load_model"), (statetap.defaults, "default_model")):
        monkeypatch.setattr(module, name, loads)
    monkeypatch.setattr(zoo, "load", loads)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "data.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    (tmp_path / "ab.json").write_text('[{"question": "q?", "answer_matching_behavior": "(A)"}]')
    return tmp_path


USAGE_ERRORS = {
    "positions": (["extract", "--positions", "0:abc", "--out", "o"], "positions must be ints"),
    "all-on-states": (["extract", "--positions", "all", "--out", "o"], "residual and mixer sites"),
    "batch-size": (["extract", "--batch-size", "0", "--out", "o"], "--batch-size must be a posit"),
    "max-output": (["extract", "--max-output", "5Q", "--out", "o"], "--max-output: a size is"),
    "no-out": (["extract"], "--out is required"),
    "missing-dataset": (
        ["extract", "--dataset", "data/nonexistent.jsonl", "--out", "o"],
        "--dataset data/nonexistent.jsonl: no such file or directory",
    ),
    "missing-model": (
        ["extract", "--model", "models/mamba-rnd", "--out", "o"],
        "--model models/mamba-rnd: no such file or directory",
    ),
    "text-field": (
        ["extract", "--dataset", "data.jsonl", "--text-field", "body", "--out", "o"],
        "has no text_field 'body'; its columns are ['text']",
    ),
    "steer-dataset": (
        ["steer", "vectors", "--dataset", "nothing.json", "--out", "o"],
        "--dataset nothing.json: no such file or directory",
    ),
    "steer-rows": (["steer", "vectors", "--dataset", "ab.json", "--out", "o"], "row 0"),
    "elk-operation": (
        ["elk", "lora", "--model", "m", "--operation", "division", "--out", "o"],
        "--operation must be one of addition, subtraction",
    ),
    "elk-fit-dataset": (
        ["elk", "run", "--model", "m", "--dataset", "ab.json", "--fit-dataset", "data/no.jsonl"]
        + ["--out", "o"],
        "--fit-dataset data/no.jsonl: no such file or directory",
    ),
    "lens-text": (
        ["lens", "train", "--text-file", "missing.txt", "--out", "o"],
        "--text-file missing.txt: no such file or directory",
    ),
    "demo-models": (["demo", "--models", "no-such-model"], "no zoo recipe named 'no-such-model'"),
    "patch-pairs-file": (
        ["patch", "--pairs", "data/pairs.jsonl", "--model", "m", "--out", "o"],
        "--pairs data/pairs.jsonl: no such file or directory",
    ),
    "patch-pairs-rows": (
        ["patch", "--pairs", "data.jsonl", "--model", "m", "--out", "o"],
        "data.jsonl line 1 lacks ['clean', 'corrupt', 'answer', 'wrong']",
    ),
    "patch-needs-model": (
        ["patch", "--pairs", "data.jsonl", "--out", "o"],
        "--pairs needs --model",
    ),
    "patch-noise": (
        ["patch", "--task", "operand", "--method", "trace", "--noise", "nan", "--out", "o"],
        "--noise must be a positive finite number, got nan",
    ),
}


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_a_usage_error_exits_2_in_one_line_without_loading_a_model(no_model, capsys, case):
    argv, message = USAGE_ERRORS[case]
    started = time.perf_counter()
    status = main(argv)
    elapsed = time.perf_counter() - started
    lines = capsys.readouterr().err.splitlines()
    command = " ".join(["statetap", *argv[: 2 if argv[0] in ("steer", "elk", "lens") else 1]])
    assert status == 2, lines
    assert len(lines) == 2 and lines[0].startswith(f"{command}: error: "), lines
    assert message in lines[0]
    assert lines[1] == f"see '{command} --help'"
    if case != "text-field":  # which reads the dataset's first row: imports datasets (~2 s)
        assert elapsed < 2.0


def test_argparse_errors_are_one_line_too(no_model, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["extract", "--batch-size", "two", "--out", "o"])
    lines = capsys.readouterr().err.splitlines()
    assert exit.value.code == 2
    assert lines == [
        "statetap extract: error: argument --batch-size: invalid int value: 'two'",
        "see 'statetap extract --help'",
    ]


def test_debug_shows_the_traceback(no_model):
    with pytest.raises(ValueError, match="positions must be ints"):
        main(["extract", "--positions", "0:abc", "--out", "o", "--debug"])


def test_a_hub_id_goes_to_the_loader_and_its_failure_is_one_line(no_model, monkeypatch, capsys):
    import statetap.defaults

    names = []

    def unreachable(name, *args, **kwargs):
        names.append(name)
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {name}")

    monkeypatch.setattr(statetap.defaults, "load_model", unreachable)
    assert main(["extract", "--model", "someone/mamba-hf", "--out", "o", "--no-progress"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert names == ["someone/mamba-hf"]  # no local folder someone/: a hub id
    assert lines == [
        "statetap extract: error: We couldn't connect to 'https://huggingface.co' to load "
        "someone/mamba-hf",
        "rerun with --debug for the traceback",
    ]


def test_threads_are_set_before_the_model_loads(no_model, monkeypatch):
    import statetap.defaults

    seen, before = [], torch.get_num_threads()

    def record(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise OSError("stop here")

    monkeypatch.setattr(statetap.defaults, "load_model", record)
    try:
        assert main(["extract", "--model", "m", "--threads", "1", "--out", "o"]) == 1
    finally:
        torch.set_num_threads(before)
    assert seen == [1]


def cold_start(tmp_path, argv: list[str]) -> tuple[subprocess.CompletedProcess, float, set]:
    """``python -X importtime -m statetap *argv`` in a fresh process: the run (its stderr
    without the import lines), its wall time and the top-level packages it imported."""
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "statetap", *argv],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONSAFEPATH="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.perf_counter() - started
    lines = run.stderr.splitlines()
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in lines
        if line.startswith("import time:") and "|" in line
    }
    run.stderr = "\n".join(line for line in lines if not line.startswith("import time:"))
    return run, elapsed, imported


def test_the_console_entry_point_exits_2_with_two_lines_before_torch_loads(tmp_path):
    run, elapsed, imported = cold_start(tmp_path, ["extract", "--positions", "0:abc", "--out", "o"])
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "statetap extract: error: positions must be ints, 'all' or a span 'start:stop' with "
        "0 <= start < stop, got '0:abc'",
        "see 'statetap extract --help'",
    ]
    assert not imported & {"torch", "transformers", "datasets"}, imported
    assert elapsed < 2.0


@pytest.mark.parametrize(
    "argv",
    [
        ["steer", "sweep", "--dataset", "ab.json", "--out", "o"],
        ["elk", "lora", "--model", "m", "--operation", "division", "--out", "o"],
        ["lens", "train", "--text-file", "a.jsonl", "--out", "o"],
        ["demo", "--models", "no-such-model"],
    ],
    ids=lambda argv: argv[0],
)
def test_the_methods_usage_errors_come_before_transformers_loads(tmp_path, argv):
    run, _, imported = cold_start(tmp_path, argv)
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.splitlines()) == 2, run.stderr
    assert not imported & {"transformers", "datasets", "matplotlib", "peft"}, imported
