"""Drift in transformers' internals fails loudly at ``attach``, never gives a wrong number.

Each test edits the installed transformers the way a release would (the source of a mixer or a
block rewritten with a renamed argument, a function renamed or gone) and checks that
``statetap.attach`` raises :class:`UpstreamDrift` naming the version, the function and the
tested range; then that the version in use passes, takes the cache under its own name, and
warns outside the tested range.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from transformers import (
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    RwkvConfig,
    RwkvForCausalLM,
)

import statetap
from statetap.adapters import upstream
from statetap.adapters.upstream import TESTED_TRANSFORMERS, UpstreamDrift
from statetap.check_references import torch_function
from statetap.kernels.examples import rel_error
from statetap.plan import Pass

MAMBA = importlib.import_module("transformers.models.mamba.modeling_mamba")
MAMBA2 = importlib.import_module("transformers.models.mamba2.modeling_mamba2")
RWKV = importlib.import_module("transformers.models.rwkv.modeling_rwkv")
VERSION = upstream.package_version("transformers")
DRIFT = rf"transformers {VERSION}: .*statetap is tested with transformers {TESTED_TRANSFORMERS[0]}"


def mamba():
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=37, hidden_size=16, state_size=4, num_hidden_layers=2)
    return MambaForCausalLM(config).eval()


def mamba2():
    torch.manual_seed(0)
    config = Mamba2Config(
        vocab_size=37,
        hidden_size=16,
        state_size=4,
        num_hidden_layers=2,
        expand=2,
        head_dim=8,
        num_heads=4,
        n_groups=1,
        chunk_size=4,
    )
    return Mamba2ForCausalLM(config).eval()


def rwkv():
    torch.manual_seed(0)
    config = RwkvConfig(
        vocab_size=37, hidden_size=16, num_hidden_layers=2, attention_hidden_size=16
    )
    return RwkvForCausalLM(config).eval()


def rewrite(monkeypatch, owner, name: str, old: str, new: str) -> None:
    """Replace ``owner.name`` (a method, or a module's function) by its own source with ``old``
    replaced by ``new`` (as a release that renames an argument would), compiled in its module's
    namespace.  A hub-kernel ``Func`` module (transformers 5.25) is rewritten as the function
    it runs."""
    function = getattr(owner, name)
    if isinstance(function, torch.nn.Module):
        function = torch_function(owner.__name__, name).function
    source = textwrap.dedent(inspect.getsource(function))
    assert old in source, f"{owner.__name__}.{name} no longer contains {old!r}"
    defined: dict = {}  # the new function's globals are the module's own, as the original's
    code = compile(source.replace(old, new), inspect.getsourcefile(function), "exec")
    exec(code, inspect.getmodule(function).__dict__, defined)
    monkeypatch.setattr(owner, name, defined[name])


def rewrite_mamba_scan(monkeypatch, old: str, new: str) -> None:
    """:func:`rewrite` where Mamba's scan calls are made: in ``MambaMixer.forward`` up to
    transformers 5.24, in the module function ``mamba_scan_forward`` from 5.25."""
    if hasattr(MAMBA, "mamba_scan_forward"):
        rewrite(monkeypatch, MAMBA, "mamba_scan_forward", old, new)
    else:
        rewrite(monkeypatch, MAMBA.MambaMixer, "forward", old, new)


def test_a_renamed_argument_of_the_scan_is_refused_at_attach(monkeypatch):
    # The release renames mamba_selective_scan's `delta_softplus` and passes it by the new name.
    rewrite_mamba_scan(monkeypatch, "delta_softplus=True", "dt_softplus=True")
    model = mamba()
    with pytest.raises(UpstreamDrift, match=DRIFT) as raised:
        statetap.attach(model)
    assert "mamba_selective_scan was called with keyword arguments statetap does not handle: " in (
        str(raised.value)
    )
    assert "['dt_softplus']" in str(raised.value)


def test_a_cache_the_mixer_gets_another_way_is_refused_at_attach(monkeypatch):
    # The block hands its mixer the cache positionally, not by the keyword statetap reads (as
    # 5.24's rename of `cache_params` to `cache` did to the keyword): every continuation would
    # start its scan from zero.
    name = (
        "cache"
        if "cache" in inspect.signature(MAMBA.MambaBlock.forward).parameters
        else ("cache_params")
    )
    rewrite(monkeypatch, MAMBA.MambaBlock, "forward", f"{name}={name}", name)
    with pytest.raises(UpstreamDrift, match=DRIFT) as raised:
        statetap.attach(mamba())
    assert f"MambaMixer.forward was not handed the cache as {name!r}" in str(raised.value)


def test_a_function_the_mixer_stops_calling_is_refused_at_attach(monkeypatch):
    # The release calls its decode step under a new name: statetap's would never run.
    monkeypatch.setattr(
        MAMBA, "renamed_state_update", MAMBA.mamba_selective_state_update, raising=False
    )
    rewrite_mamba_scan(monkeypatch, "mamba_selective_state_update(", "renamed_state_update(")
    with pytest.raises(UpstreamDrift, match=DRIFT + ".*") as raised:
        statetap.attach(mamba())
    assert "mamba_selective_state_update was not called during a 1-token continuation" in str(
        raised.value
    )


def test_a_function_that_is_gone_is_refused_at_attach(monkeypatch):
    monkeypatch.delattr(RWKV, "rwkv_linear_attention")
    with pytest.raises(UpstreamDrift, match=DRIFT) as raised:
        statetap.attach(rwkv())
    assert "modeling_rwkv.rwkv_linear_attention does not exist any more" in str(raised.value)


def test_unknown_arguments_of_the_rwkv_attention_are_refused(monkeypatch):
    rewrite(
        monkeypatch,
        RWKV.RwkvSelfAttention,
        "forward",
        "return_state=use_cache",
        "return_state=use_cache, chunked=True",
    )
    with pytest.raises(UpstreamDrift, match=r"rwkv_linear_attention .*\['chunked'\]"):
        statetap.attach(rwkv())


@pytest.mark.parametrize("build", [mamba, mamba2, rwkv])
def test_the_installed_version_passes_and_takes_the_cache_under_its_own_name(build):
    model = build()
    tap = statetap.attach(model)
    ids = torch.randint(0, 37, (1, 7))
    whole = tap.run(ids).logits
    prompt = tap.run(ids[:, :4], keep_state=True)
    resumed = tap.run(ids[:, 4:], state=prompt.state).logits
    assert rel_error(whole[:, 4:], resumed) <= 1e-5
    if build is not rwkv:
        mixer = inspect.signature(type(model.backbone.layers[0].mixer).forward).parameters
        assert tap.adapter.cache_name in mixer and tap.adapter.cache_name in (
            "cache",
            "cache_params",
        )
        # the model's own output carries the cache under that name
        out = model(ids, use_cache=True)
        assert getattr(out, tap.adapter.cache_name) is not None


def test_an_untested_transformers_version_warns(monkeypatch):
    monkeypatch.setattr(upstream, "package_version", lambda package: "99.0.0")
    with pytest.warns(UserWarning, match="transformers 99.0.0 is outside the tested range"):
        statetap.attach(mamba())


def test_packed_sequences_in_mamba2_equal_each_sequence_alone():
    """Mamba-2's ``seq_idx`` (known, so handled): the scan and the convolution restart at each
    sequence boundary, so the second of two packed sequences gives the logits it gives alone."""
    model = mamba2()
    tap = statetap.attach(model)
    first, second = torch.randint(0, 37, (1, 5)), torch.randint(0, 37, (1, 6))
    packed = torch.cat([first, second], 1)
    seq_idx = torch.tensor([[0] * 5 + [1] * 6], dtype=torch.int32)
    logits = tap.run(packed, seq_idx=seq_idx).logits
    alone = tap.run(second).logits
    assert rel_error(alone, logits[:, 5:]) <= 1e-5
    assert rel_error(tap.run(first).logits, logits[:, :5]) <= 1e-5
    # without seq_idx the second sequence reads the first
    assert rel_error(alone, tap.run(packed).logits[:, 5:]) > 1e-3


def test_output_only_model_arguments_reach_the_drop_ins_and_are_ignored():
    """transformers 5.25 hands a model's keyword arguments on to the convolution and the scan:
    those that only ask for more output pass, those that would change the result are refused."""
    model = mamba2()
    tap = statetap.attach(model)
    ids = torch.randint(0, 37, (2, 7))
    out = tap.run(ids, output_hidden_states=True, output_attentions=False)
    assert rel_error(model(ids).logits, out.logits) <= 1e-6
    with pytest.raises(UpstreamDrift, match=r"handle: \['cu_seq_lens_q'\]"):
        upstream.refuse_unknown("transformers", "f", {"cu_seq_lens_q": 1, "position_ids": 2})


@pytest.mark.parametrize("build", [mamba, mamba2])
def test_a_cache_that_records_its_past_is_refused(build):
    model = build()
    tap = statetap.attach(model)
    cache = tap.adapter.output_cache(model(torch.randint(0, 37, (1, 3)), use_cache=True))
    cache.activate_past_recording()
    pass_ = Pass(batch=1, length=1)
    with pytest.raises(ValueError, match="the cache records its past states"):
        tap.adapter.enter_layer(pass_, 0, {tap.adapter.cache_name: cache})


def test_the_kernels_folder_refuses_to_pass_for_the_kernels_package():
    """Python run from the checkout's root finds ``kernels/`` as a top-level ``kernels``, the
    name of the PyPI package transformers 5.25 imports: the import fails and says why."""
    root = Path(__file__).resolve().parents[1]
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    run = subprocess.run(
        [sys.executable, "-c", "import kernels"],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "statetap's kernels folder" in run.stderr and "PYTHONSAFEPATH=1" in run.stderr


def test_setup_py_admits_exactly_the_tested_transformers():
    """setup.py's range and TESTED_TRANSFORMERS name the same releases (upgrade_check.sh
    --matrix reads the latter; pip installs by the former)."""
    (line,) = [r for r in importlib.metadata.requires("statetap") if r.startswith("transformers")]
    specifier = SpecifierSet(line.removeprefix("transformers"))
    oldest, newest = (Version(v) for v in TESTED_TRANSFORMERS)
    assert oldest in specifier and newest in specifier
    assert {s.operator for s in specifier} == {">=", "<="}
    assert {Version(s.version) for s in specifier} == {oldest, newest}
