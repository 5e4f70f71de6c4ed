"""statetap on mamba-ssm's ``MambaLMHeadModel`` against the plain model (tiny, from a config).

Run by ``tests/test_mamba_ssm.py`` in a separate process: on a machine without mamba-ssm's CUDA
extension, importing mamba-ssm needs a stand-in ``selective_scan_cuda`` module, and once
mamba-ssm imports, transformers' own Mamba binds to its kernels for the rest of the process.

The plain model runs on mamba-ssm's own CPU paths: ``selective_scan_ref`` (its torch reference
of the CUDA scan) and the torch decode step it takes when ``selective_state_update`` is None.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

try:
    import selective_scan_cuda  # noqa: F401  (the real extension, on a CUDA build)
except ImportError:
    sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")

import mamba_ssm.modules.mamba_simple as mamba_simple  # noqa: E402
from mamba_ssm.models.config_mamba import MambaConfig  # noqa: E402
from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel  # noqa: E402
from mamba_ssm.ops.selective_scan_interface import selective_scan_ref  # noqa: E402
from mamba_ssm.utils.generation import InferenceParams  # noqa: E402

import statetap  # noqa: E402
from statetap.kernels.examples import rel_error  # noqa: E402

VOCAB, LENGTH, LAYERS = 97, 11, 3
D_INNER, D_STATE, D_CONV = 64, 8, 4


@pytest.fixture(autouse=True)
def cpu_paths(monkeypatch):
    """mamba-ssm's own torch paths for the plain model (statetap patches over them in a pass);
    its ``decode`` creates CUDA timing events even when not timing."""
    monkeypatch.setattr(mamba_simple, "selective_scan_fn", selective_scan_ref)
    monkeypatch.setattr(mamba_simple, "selective_state_update", None)
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "Event", lambda **_: None)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1234)
    config = MambaConfig(
        d_model=32,
        d_intermediate=48,  # an MLP after each mixer: block output != mixer output
        n_layer=LAYERS,
        vocab_size=VOCAB,
        ssm_cfg={"layer": "Mamba1", "d_state": D_STATE, "d_conv": D_CONV, "use_fast_path": False},
        rms_norm=False,
        fused_add_norm=False,
        residual_in_fp32=True,
        pad_vocab_size_multiple=1,
    )
    return MambaLMHeadModel(config).eval()


def _ids(batch: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, LENGTH))


def _close(reference: torch.Tensor, value: torch.Tensor, tol: float = 1e-5) -> None:
    assert reference.shape == value.shape, (reference.shape, value.shape)
    assert rel_error(reference, value) <= tol, rel_error(reference, value)


def _prefill(model, ids: torch.Tensor) -> InferenceParams:
    """The plain model's cache after ``ids``."""
    cache = InferenceParams(max_seqlen=LENGTH, max_batch_size=ids.shape[0])
    model(ids, inference_params=cache)
    cache.seqlen_offset = ids.shape[1]
    return cache


def _step_through(model, cache: InferenceParams, ids: torch.Tensor) -> torch.Tensor:
    """The plain model's logits of ``ids`` fed one token at a time after ``cache``."""
    logits = []
    for t in range(ids.shape[1]):
        logits.append(model(ids[:, t : t + 1], inference_params=cache).logits)
        cache.seqlen_offset += 1
    return torch.cat(logits, 1)


@torch.no_grad()
def test_nothing_requested_reproduces_the_logits_and_padding_is_refused(model):
    ids = _ids()
    _close(model(ids).logits, statetap.attach(model).run(ids).logits, 1e-6)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with pytest.raises(ValueError, match="takes no attention mask .* pass rows of equal length"):
        statetap.attach(model).run(ids, attention_mask=mask)


@torch.no_grad()
def test_residual_is_hidden_plus_residual_of_each_block(model):
    """The block output ``(hidden, residual)`` summed (what rnngineering's hooks read)."""
    ids = _ids()
    streams = {}
    handles = [
        block.register_forward_hook(
            lambda module, args, out, layer=layer: streams.__setitem__(layer, out[0] + out[1])
        )
        for layer, block in enumerate(model.backbone.layers)
    ]
    try:
        model(ids)
    finally:
        for handle in handles:
            handle.remove()
    result = statetap.attach(model).run(ids, emit=[statetap.Emit("residual", positions="all")])
    for layer in range(LAYERS):
        _close(streams[layer], result["residual", layer], 1e-6)


@torch.no_grad()
def test_a_pass_stopped_after_a_layer_equals_the_full_pass_and_runs_nothing_later(model):
    ids = _ids()
    tap = statetap.attach(model)
    later = [model.backbone.layers[2], model.backbone.norm_f, model.lm_head]
    calls = []
    handles = [m.register_forward_hook(lambda *args: calls.append(args[0])) for m in later]
    emit = [statetap.Emit("residual", [0, 1], [0, -1]), statetap.Emit("state", 1, [3, -1])]
    try:
        stopped = tap.run(ids, emit=emit, stop_after=1)
        assert calls == []
        full = tap.run(ids, emit=emit)
        assert len(calls) == len(later)
    finally:
        for handle in handles:
            handle.remove()
    assert stopped.logits is None and set(stopped.activations) == set(full.activations)
    for key, value in full.activations.items():
        assert torch.equal(stopped[key], value), key


@torch.no_grad()
@pytest.mark.parametrize("t", [0, 5, LENGTH - 1])
def test_emitted_state_equals_the_models_cache_after_the_prefix(model, t):
    ids = _ids()
    tap = statetap.attach(model)
    result = tap.run(ids, emit=[statetap.Emit("state", positions=[t, -1])], keep_state=True)
    prefix, final = _prefill(model, ids[:, : t + 1]), _prefill(model, ids)
    for layer in range(LAYERS):
        for site, index in (("conv", 0), ("ssm", 1)):
            assert result[site, layer].shape == (3, 2, D_INNER, {"conv": D_CONV}.get(site, D_STATE))
            _close(prefix.key_value_memory_dict[layer][index], result[site, layer][:, 0])
            _close(final.key_value_memory_dict[layer][index], result[site, layer][:, 1])
            _close(final.key_value_memory_dict[layer][index], result.state.get(site, layer))


@torch.no_grad()
@pytest.mark.parametrize("mode", ["add", "set"])
@pytest.mark.parametrize("site", ["ssm", "conv"])
def test_state_injection_equals_editing_the_cache_between_two_tokens(model, site, mode):
    ids, t, layer = _ids(), 4, 1
    value = torch.randn(statetap.attach(model).site_shape(site))
    scale = torch.tensor([0.5, -1.0, 2.0]) if mode == "add" else None
    injected = statetap.attach(model).run(
        ids, inject=[statetap.Inject(site, layer, value, positions=t, mode=mode, scale=scale)]
    )
    cache = _prefill(model, ids[:, : t + 1])
    state = cache.key_value_memory_dict[layer][{"conv": 0, "ssm": 1}[site]]
    if mode == "set":
        state.copy_(value.expand_as(state))
    else:
        state.add_(scale.view(-1, 1, 1) * value)
    rest = _step_through(model, cache, ids[:, t + 1 :])
    _close(model(ids).logits[:, : t + 1], injected.logits[:, : t + 1], 1e-6)
    _close(rest, injected.logits[:, t + 1 :])
    assert rel_error(model(ids).logits[:, t + 1 :], injected.logits[:, t + 1 :]) > 1e-4


@torch.no_grad()
def test_residual_and_mixer_injection_equal_forward_hooks(model):
    ids, layer, t = _ids(), 1, 6
    value = torch.randn(32)
    block, mixer = model.backbone.layers[layer], model.backbone.layers[layer].mixer

    def add_at_t(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        tensor[:, t] += 3.0 * value
        return tensor

    tap = statetap.attach(model)
    for site, module, hook in (
        ("residual", block, lambda m, a, out: (add_at_t(out[0]), out[1])),
        ("mixer", mixer, lambda m, a, out: add_at_t(out)),
    ):
        handle = module.register_forward_hook(hook)
        try:
            hooked = model(ids).logits
        finally:
            handle.remove()
        result = tap.run(ids, inject=[statetap.Inject(site, layer, value, positions=t, scale=3.0)])
        _close(hooked, result.logits, 1e-6)
    # "set" makes the stream itself the value.
    result = tap.run(
        ids,
        inject=[statetap.Inject("residual", layer, value, positions=t, mode="set")],
        emit=[statetap.Emit("residual", layer, positions=[t - 1, t])],
    )
    plain = tap.run(ids, emit=[statetap.Emit("residual", layer, positions=t - 1)])
    _close(plain["residual", layer], result["residual", layer][:, :1], 1e-6)
    _close(value.expand(3, 32), result["residual", layer][:, 1], 1e-6)


@torch.no_grad()
@pytest.mark.parametrize("rest", [1, 4], ids=["one-token", "several-tokens"])
def test_resuming_and_forking_a_state_equal_one_pass(model, rest):
    tap = statetap.attach(model)
    ids, cut = _ids(2), LENGTH - rest
    value = 0.5 * torch.randn(D_INNER, D_STATE)
    scales = torch.tensor([-1.0, 0.0, 2.0])
    whole = tap.run(ids)
    prompt = tap.run(ids[:, :cut], keep_state=True).state
    _close(whole.logits[:, cut:], tap.run(ids[:, cut:], state=prompt).logits)
    sweep = prompt.fork(3)
    sweep.edit("ssm", 2, value, scale=scales.repeat(2))
    branched = tap.run(ids[:, cut:].repeat_interleave(3, 0), state=sweep).logits
    for i, scale in enumerate(scales.tolist()):
        inject = statetap.Inject("ssm", 2, value, positions=cut - 1, scale=scale)
        _close(tap.run(ids, inject=[inject]).logits[:, cut:], branched[i::3])


@torch.no_grad()
def test_steered_generate_equals_a_manual_step_by_step_loop(model):
    tap = statetap.attach(model)
    prompt, new = _ids(2)[:, :6], 4
    state_value = 0.3 * torch.randn(D_INNER, D_STATE)
    residual_value = torch.randn(32)
    requests = [
        statetap.Inject("ssm", 1, state_value, positions=-1, scale=2.0),
        statetap.Inject("residual", 0, residual_value, positions="new"),
    ]
    generated = tap.generate(
        prompt,
        inject=requests,
        emit=[statetap.Emit("conv", 2, positions="new")],
        max_new_tokens=new,
    )
    # By hand, on the plain model: prefill, edit the cache after the last prompt token (which
    # its own logits do not see), then one step per new token with a hook adding to block 0.
    cache = _prefill(model, prompt)
    cache.key_value_memory_dict[1][1].add_(2.0 * state_value)
    tokens, windows = [model(prompt).logits[:, -1].argmax(-1)], []
    handle = model.backbone.layers[0].register_forward_hook(
        lambda m, a, out: (out[0] + residual_value, out[1])
    )
    try:
        for _ in range(new - 1):
            step = model(tokens[-1][:, None], inference_params=cache).logits
            cache.seqlen_offset += 1
            windows.append(cache.key_value_memory_dict[2][0].clone())
            tokens.append(step[:, -1].argmax(-1))
    finally:
        handle.remove()
    assert torch.equal(generated.sequences, torch.cat([prompt, torch.stack(tokens, 1)], 1))
    assert not torch.equal(generated.sequences, model.generate(prompt, max_length=6 + new))
    _close(torch.stack(windows, 1), generated["conv", 2])


def test_only_mamba1_mixers_are_supported():
    config = MambaConfig(
        d_model=32, n_layer=1, vocab_size=VOCAB, ssm_cfg={"layer": "Mamba2", "headdim": 16}
    )
    with pytest.raises(TypeError, match="Mamba-1 mixers only; layer 0 is a Mamba2"):
        statetap.attach(MambaLMHeadModel(config))


def test_drift_in_mamba_ssm_is_refused_at_attach(model, monkeypatch):
    from statetap.adapters.upstream import UpstreamDrift

    original = mamba_simple.Mamba.forward

    def renamed(self, hidden_states, cache=None):  # a release renaming inference_params
        return original(self, hidden_states, inference_params=cache)

    monkeypatch.setattr(mamba_simple.Mamba, "forward", renamed)
    with pytest.raises(UpstreamDrift, match=r"mamba-ssm .*takes none of the cache arguments"):
        statetap.attach(model)
