"""The Mamba-2 hybrids (Bamba, Granite 4.0 hybrid, Nemotron-H) against transformers' own code.

Tiny models from configs with fixed seeds, each with attention layers between its Mamba-2
layers (and, on Nemotron-H, MLP and MoE layers).  Every identity compares a statetap pass with
the model's own forward and its own hybrid cache: logits with nothing requested, residuals against
``output_hidden_states``, emitted states against the cache after the prefix, a state injection
against editing the cache between two tokens and continuing with the model (its attention layers'
keys and values included), resumed and forked passes against one pass, padded rows against each
row alone, and steered generation against a greedy loop over the edited cache.
"""

from __future__ import annotations

import pytest
import torch
from _extract_models import TOKENIZER as BYTES
from _extract_models import random_texts
from transformers import (
    BambaConfig,
    BambaForCausalLM,
    GraniteMoeHybridConfig,
    GraniteMoeHybridForCausalLM,
    NemotronHConfig,
    NemotronHForCausalLM,
)

import statetap
from statetap.adapters.upstream import UpstreamDrift
from statetap.extract import ExtractConfig, extract, load_extraction
from statetap.interp.lens import LogitLens, TunedLens
from statetap.interp.provenance import model_identity
from statetap.interp.steering import (
    PromptTemplate,
    SteeringVectors,
    ab_pairs,
    load_ab_items,
    mean_difference,
    sweep,
)
from statetap.kernels.examples import rel_error

VOCAB, LENGTH = 97, 11
_ATTENTION = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
_MAMBA2 = dict(
    mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=4
)
# name -> (config class, model class, config arguments, the layers with a state)
HYBRIDS = {
    "bamba": (
        BambaConfig,
        BambaForCausalLM,
        _ATTENTION
        | _MAMBA2
        | dict(num_hidden_layers=3, intermediate_size=48, attn_layer_indices=[1]),
        (0, 2),
    ),
    "granitemoehybrid": (
        GraniteMoeHybridConfig,
        GraniteMoeHybridForCausalLM,
        _ATTENTION
        | _MAMBA2
        | dict(
            num_hidden_layers=3,
            intermediate_size=24,
            shared_intermediate_size=24,
            num_local_experts=4,
            num_experts_per_tok=2,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
        ),
        (0, 2),
    ),
    "nemotron_h": (
        NemotronHConfig,
        NemotronHForCausalLM,
        _ATTENTION
        | dict(
            layers_block_type=[
                "linear_attention",
                "full_attention",
                "mlp",
                "linear_attention",
                "moe",
            ],
            head_dim=8,
            intermediate_size=48,
            ssm_state_size=8,
            mamba_num_heads=8,
            mamba_head_dim=8,
            n_groups=2,
            chunk_size=4,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            moe_shared_expert_intermediate_size=16,
            n_group=1,
            topk_group=1,
        ),
        (0, 3),
    ),
}


def _build(name: str, vocab: int = VOCAB, **changes):
    torch.manual_seed(1234)
    config_class, model_class, arguments, _ = HYBRIDS[name]
    return model_class(config_class(vocab_size=vocab, **arguments | changes)).eval()


#: the config option that gives each class's Mamba input projection a bias
BIAS_OPTIONS = {
    "bamba": "mamba_proj_bias",
    "granitemoehybrid": "mamba_proj_bias",
    "nemotron_h": "use_bias",
}


@pytest.fixture(scope="module", params=list(HYBRIDS))
def model(request):
    return _build(request.param)


def _ids(batch: int = 3, length: int = LENGTH) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length))


def _close(reference: torch.Tensor, value: torch.Tensor, tol: float = 1e-6) -> None:
    assert reference.shape == value.shape, (reference.shape, value.shape)
    assert rel_error(reference, value) <= tol, rel_error(reference, value)


def _cache(tap, output):
    return tap.adapter.output_cache(output)


def _continue(model, tap, cache, ids: torch.Tensor):
    """The model's own forward of ``ids`` after ``cache``, with the positions ``generate`` would
    give (``BambaModel`` numbers every forward from 0 without them: docs/models.md)."""
    start = cache.get_seq_length()
    positions = (torch.arange(ids.shape[1]) + start)[None]
    return model(ids, position_ids=positions, **tap.adapter.cache_kwargs(cache))


def _attention_layers(tap) -> list[int]:
    return [
        layer
        for layer in range(tap.adapter.n_layers)
        if type(tap.adapter.mixer(layer)).__name__.endswith("Attention")
    ]


def test_state_layers_are_the_mamba_layers(model):
    tap = statetap.attach(model)
    assert tap.state_layers == HYBRIDS[_name(model)][3]
    assert _attention_layers(tap), "each tiny config has an attention layer"
    attention = _attention_layers(tap)[0]
    ids = _ids()
    with pytest.raises(ValueError, match=r"holds no recurrent state .* tap.state_layers = \[0, "):
        tap.run(ids, emit=[statetap.Emit("ssm", attention)])
    with pytest.raises(ValueError, match=r"tap.state_layers"):
        tap.run(
            ids, inject=[statetap.Inject("conv", attention, torch.zeros(tap.site_shape("conv")))]
        )
    state = tap.run(ids, keep_state=True).state
    with pytest.raises(ValueError, match=r"state_layers = \[0, "):
        state.get("ssm", attention)
    with pytest.raises(ValueError, match="seq_idx .* attention layers would attend across"):
        tap.run(ids, seq_idx=torch.zeros_like(ids, dtype=torch.int32))
    model.train()
    try:
        with pytest.raises(ValueError, match="is in training mode"):  # fused training paths
            tap.run(ids)
    finally:
        model.eval()
    everything = tap.run(ids, emit=[statetap.Emit("state"), statetap.Emit("mixer")])
    expected = {(site, layer) for site in ("ssm", "conv") for layer in tap.state_layers}
    expected |= {("mixer", layer) for layer in range(tap.adapter.n_layers)}
    assert set(everything.activations) == expected


def _name(model) -> str:
    return next(name for name, entry in HYBRIDS.items() if isinstance(model, entry[1]))


def _left_padded() -> tuple[torch.Tensor, torch.Tensor]:
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    return ids, mask


@torch.no_grad()
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_nothing_requested_reproduces_the_logits(model, padded):
    ids, mask = _left_padded() if padded else (_ids(), None)
    plain = model(ids, attention_mask=mask).logits
    _close(plain, statetap.attach(model).run(ids, attention_mask=mask).logits)


@torch.no_grad()
def test_residual_equals_output_hidden_states(model):
    ids = _ids()
    tap = statetap.attach(model)
    plain = model(ids, output_hidden_states=True)
    result = tap.run(ids, emit=[statetap.Emit("residual", positions="all")])
    layout = tap.adapter.hidden_states_layout
    assert layout[0] == "embeddings" and layout[-1] == "final norm"
    assert list(layout[1:-1]) == list(range(tap.adapter.n_layers - 1))
    for entry, hidden in zip(layout[1:-1], plain.hidden_states[1:-1]):
        _close(hidden, result["residual", entry])
    last = result["residual", tap.adapter.n_layers - 1]
    _close(plain.hidden_states[-1], tap.adapter.final_norm(last))


@torch.no_grad()
@pytest.mark.parametrize("t", [0, 4, LENGTH - 1])
def test_emitted_state_equals_the_models_cache_after_the_prefix(model, t):
    tap = statetap.attach(model)
    ids = _ids()
    result = tap.run(ids, emit=[statetap.Emit("state", positions=[t, -1])], use_cache=True)
    prefix = _cache(tap, model(ids[:, : t + 1], use_cache=True))
    final = _cache(tap, result.output)
    for site in tap.adapter.state_sites:
        for layer in tap.state_layers:
            emitted = result[site, layer]
            assert emitted.dtype == torch.float32
            _close(tap.adapter.cached_state(prefix, site, layer).float(), emitted[:, 0], 1e-5)
            _close(tap.adapter.cached_state(final, site, layer).float(), emitted[:, 1], 1e-5)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["add", "set"])
@pytest.mark.parametrize("site", ["ssm", "conv"])
def test_state_injection_equals_editing_the_cache_between_two_tokens(model, site, mode):
    """The paper's procedure with the model's own code: prefill to t, edit the Mamba layer's entry
    of the hybrid cache, feed the rest (which reads the attention layers' keys and values too)."""
    tap = statetap.attach(model)
    ids, t, layer = _ids(), 5, tap.state_layers[-1]
    shape = tap.site_shape(site)
    value = torch.randn(*shape)
    scale = torch.tensor([0.5, -1.0, 2.0]) if mode == "add" else None
    request = statetap.Inject(site, layer, value, positions=t, mode=mode, scale=scale)
    injected = tap.run(ids, inject=[request])
    prefix = model(ids[:, : t + 1], use_cache=True)
    cache = _cache(tap, prefix)
    state = tap.adapter.cached_state(cache, site, layer)
    if mode == "set":
        edited = value.expand_as(state)
    else:
        edited = state + scale.view(-1, *[1] * len(shape)) * value
    tap.adapter.write_state(cache, site, layer, edited)
    rest = _continue(model, tap, cache, ids[:, t + 1 :]).logits
    _close(prefix.logits, injected.logits[:, : t + 1])
    _close(rest, injected.logits[:, t + 1 :], 1e-5)
    assert rel_error(model(ids).logits[:, t + 1 :], injected.logits[:, t + 1 :]) > 1e-4


@torch.no_grad()
@pytest.mark.parametrize("kind", ["mamba", "attention"])
def test_mixer_injection_equals_a_forward_hook(model, kind):
    tap = statetap.attach(model)
    layer = tap.state_layers[-1] if kind == "mamba" else _attention_layers(tap)[0]
    ids, t = _ids(), 6
    value = torch.randn(tap.site_shape("mixer"))

    def add_at_t(module, args, output):
        tensor = tap.adapter.mixer_output(output).clone()
        tensor[:, t] += 3.0 * value
        return tap.adapter.with_mixer_output(output, tensor)

    handle = tap.adapter.mixer(layer).register_forward_hook(add_at_t)
    try:
        hooked = model(ids).logits
    finally:
        handle.remove()
    result = tap.run(ids, inject=[statetap.Inject("mixer", layer, value, positions=t, scale=3.0)])
    _close(hooked, result.logits)
    assert rel_error(model(ids).logits[:, t:], result.logits[:, t:]) > 1e-4


@torch.no_grad()
@pytest.mark.parametrize("rest", [1, 4], ids=["one-token", "several-tokens"])
def test_resuming_from_a_state_equals_one_pass(model, rest):
    """The snapshot carries the attention layers' keys and values: the continuation's logits,
    which read them, equal the single pass's."""
    tap = statetap.attach(model)
    ids = _ids()
    cut = LENGTH - rest
    whole = tap.run(ids, emit=[statetap.Emit("state", positions=[cut - 1, cut])])
    prompt = tap.run(ids[:, :cut], keep_state=True)
    resumed = tap.run(ids[:, cut:], state=prompt.state, emit=[statetap.Emit("state", positions=0)])
    again = tap.run(ids[:, cut:], state=prompt.state)  # the snapshot is left as it was
    _close(whole.logits[:, cut:], resumed.logits, 1e-5)
    assert torch.equal(resumed.logits, again.logits)
    for site in tap.adapter.state_sites:
        for layer in tap.state_layers:
            _close(whole[site, layer][:, 0], prompt.state.get(site, layer), 1e-5)
            _close(whole[site, layer][:, 1], resumed[site, layer][:, 0], 1e-5)


@torch.no_grad()
def test_fork_and_edit_equal_injections_in_one_pass(model):
    """fork(3) repeats every layer's rows, keys and values included; edit + resume == Inject."""
    tap = statetap.attach(model)
    ids, cut, layer = _ids(2), 6, tap.state_layers[0]
    value = 0.5 * torch.randn(tap.site_shape("ssm"))
    scales = torch.tensor([-1.0, 0.0, 2.0])
    sweep = tap.run(ids[:, :cut], keep_state=True).state.fork(3)
    sweep.edit("ssm", layer, value, scale=scales.repeat(2))
    branched = tap.run(ids[:, cut:].repeat_interleave(3, 0), state=sweep).logits
    for i, scale in enumerate(scales.tolist()):
        inject = statetap.Inject("ssm", layer, value, positions=cut - 1, scale=scale)
        _close(tap.run(ids, inject=[inject]).logits[:, cut:], branched[i::3], 1e-5)


@torch.no_grad()
def test_padded_rows_equal_each_row_alone(model):
    """The hybrids zero the padded tokens' Mamba inputs and mask them out of attention: each
    left-padded row's logits and states equal that row run alone (rotary positions shift by the
    padding, which attention does not see: relative positions are unchanged)."""
    tap = statetap.attach(model)
    ids, mask = _left_padded()
    emit = [statetap.Emit("state", positions=[0, 3, -1]), statetap.Emit("mixer", positions=-1)]
    both = tap.run(ids, attention_mask=mask, emit=emit, keep_state=True)
    for row in range(3):
        pads = int((mask[row] == 0).sum())
        alone = tap.run(ids[row : row + 1, pads:], emit=emit, keep_state=True)
        _close(alone.logits[0], both.logits[row, pads:], 1e-5)
        for key, value in alone.activations.items():
            _close(value[0], both[key][row], 1e-5)
        for layer in tap.state_layers:
            _close(alone.state.get("ssm", layer)[0], both.state.get("ssm", layer)[row], 1e-5)


@torch.no_grad()
def test_padding_is_refused_where_the_model_does_not_honour_it(model):
    """With a bias in the Mamba input projection, a pad token's projection enters the first real
    tokens' convolution window: the model's own padded row differs from the row alone, and
    statetap refuses the padded batch, naming the option."""
    name = _name(model)
    biased = _build(name, **{BIAS_OPTIONS[name]: True})
    tap = statetap.attach(biased)
    for layer in tap.state_layers:  # transformers initialises biases to zero
        tap.adapter.mamba_mixer(layer).in_proj.bias.normal_()
    ids, mask = _left_padded()
    alone = biased(ids[1:2, 3:]).logits[0]
    assert rel_error(alone, biased(ids, attention_mask=mask).logits[1, 3:]) > 1e-4
    with pytest.raises(ValueError, match=f"config.{BIAS_OPTIONS[name]}=True"):
        tap.run(ids, attention_mask=mask)
    _close(biased(ids).logits, tap.run(ids).logits)  # unpadded batches run


@torch.no_grad()
def test_steered_generation_equals_a_greedy_loop_over_the_edited_cache(model):
    """tap.generate with a state injection at the last prompt token == the model's own prefill,
    the cache edited, then a greedy loop of the model's own one-token forwards."""
    tap = statetap.attach(model)
    prompt, new, layer = _ids(2, 6), 4, tap.state_layers[-1]
    value = 0.5 * torch.randn(tap.site_shape("ssm"))
    options = dict(
        max_new_tokens=new,
        do_sample=False,
        eos_token_id=[],
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
        attention_mask=torch.ones_like(prompt),
    )
    generated = tap.generate(
        prompt, inject=[statetap.Inject("ssm", layer, value, positions=-1, scale=2.0)], **options
    )
    out = model(prompt, use_cache=True)
    cache = _cache(tap, out)
    state = tap.adapter.cached_state(cache, "ssm", layer)
    tap.adapter.write_state(cache, "ssm", layer, state + 2.0 * value)
    tokens, scores = [], []
    for k in range(new):
        scores.append(out.logits[:, -1])
        tokens.append(out.logits[:, -1].argmax(-1))
        if k < new - 1:
            out = _continue(model, tap, cache, tokens[-1][:, None])
            cache = _cache(tap, out)
    assert torch.equal(generated.sequences, torch.cat([prompt, torch.stack(tokens, 1)], 1))
    for k in range(new):
        _close(scores[k], generated.output.scores[k], 1e-5)
    assert rel_error(model.generate(prompt, **options).scores[1], scores[1]) > 1e-4


@torch.no_grad()
def test_resuming_after_a_left_padded_prompt_masks_the_cached_padding(model):
    """The snapshot remembers which cached tokens were padding: the attention layers' keys of the
    pads stay masked in the continuation, so each row equals that row run alone in one pass."""
    tap = statetap.attach(model)
    ids, mask = _left_padded()
    cut = 7
    prompt = tap.run(ids[:, :cut], attention_mask=mask[:, :cut], keep_state=True)
    rest = ids[:, cut:].repeat_interleave(2, 0)
    resumed = tap.run(rest, state=prompt.state.fork(2))  # fork keeps the rows' masks
    for row in range(3):
        pads = int((mask[row] == 0).sum())
        alone = model(ids[row : row + 1, pads:]).logits[0]
        _close(alone[cut - pads :], resumed.logits[2 * row], 1e-5)
        _close(alone[cut - pads :], resumed.logits[2 * row + 1], 1e-5)


# ------------------------------------------------------------------ the layers above adapters
@torch.no_grad()
def test_extract_stores_residuals_and_the_mamba_layers_states(model, tmp_path):
    """``statetap extract`` of every token: the residual of every layer equals the model's
    ``output_hidden_states``, the states (stored for the Mamba layers only) its cache after each
    prefix."""
    model = _build(_name(model), vocab=len(BYTES))
    tap = statetap.attach(model)
    texts = random_texts([9, 2, 13], seed=3)
    config = ExtractConfig(out=tmp_path, positions="0:64", batch_size=2, progress=False)
    extract(model, BYTES, texts, config, "m")
    _, tensors = load_extraction(tmp_path)
    stored = {name for name in tensors if "." in name}
    expected = {f"residual.{layer}" for layer in range(tap.adapter.n_layers)}
    expected |= {f"{site}.{layer}" for site in ("ssm", "conv") for layer in tap.state_layers}
    assert stored == expected
    offsets = tensors["offsets"]
    for row, text in enumerate(texts):
        tokens = slice(int(offsets[row]), int(offsets[row + 1]))
        ids = torch.tensor([BYTES(text, add_special_tokens=False)["input_ids"]])
        hidden = model(ids, output_hidden_states=True).hidden_states
        for layer in range(tap.adapter.n_layers - 1):
            index = tap.adapter.hidden_states_index(layer)
            _close(hidden[index][0], tensors[f"residual.{layer}"][tokens])
        for t in (0, len(text) - 1):
            cache = _cache(tap, model(ids[:, : t + 1], use_cache=True))
            for site in ("ssm", "conv"):
                for layer in tap.state_layers:
                    own = tap.adapter.cached_state(cache, site, layer)[0].float()
                    _close(own, tensors[f"{site}.{layer}"][tokens][t], 1e-5)


TEMPLATE = PromptTemplate("Q: {question}", " A: (")


def _pairs(n: int):
    rows = []
    for _ in range(n):
        question = "".join(
            "abcdefgh "[int(i)] for i in torch.randint(0, 9, (int(torch.randint(3, 9, ())),))
        )
        a_matches = bool(torch.rand(()) < 0.5)
        rows.append(
            {
                "question": f"{question}\n(A) yes\n(B) no",
                "answer_matching_behavior": "(A)" if a_matches else "(B)",
                "answer_not_matching_behavior": "(B)" if a_matches else "(A)",
            }
        )
    return ab_pairs(load_ab_items(rows), BYTES, TEMPLATE)


@torch.no_grad()
def test_state_steering_sweep_equals_editing_the_hybrid_cache(model):
    """The sweep's state mode at a Mamba layer == the paper's procedure on the model's own code:
    prefill all but the last token, add m * delta to that layer's ssm and conv entries of the
    hybrid cache, step the last token.  A state mode at an attention layer is refused."""
    model = _build(_name(model), vocab=len(BYTES))
    tap = statetap.attach(model)
    pairs, layer = _pairs(4), tap.state_layers[-1]
    vectors = mean_difference(tap, *pairs.completions(), batch_size=3, progress=False)
    assert {key for key in vectors.vectors if key[0] != "residual"} == {
        (site, state_layer) for site in ("ssm", "conv") for state_layer in tap.state_layers
    }
    vectors = SteeringVectors(
        {key: 3.0 * torch.randn(value.shape) for key, value in vectors.vectors.items()},
        dict(identity=model_identity(model)),
    )
    multipliers = [-1.0, 2.0]
    result = sweep(
        tap, pairs, vectors, multipliers, [layer], modes=["state"], batch_size=3, progress=False
    )
    moved = 0.0
    for row, ids in enumerate(pairs.prompts.ids):
        yes, no = int(pairs.matching[row]), int(pairs.not_matching[row])
        for j, m in enumerate(multipliers):
            cache = _cache(tap, model(torch.tensor([ids[:-1]]), use_cache=True))
            for site in ("ssm", "conv"):
                state = tap.adapter.cached_state(cache, site, layer)
                tap.adapter.write_state(cache, site, layer, state + m * vectors[site, layer])
            logits = _continue(model, tap, cache, torch.tensor([ids[-1:]])).logits[0, -1]
            p = logits.double().softmax(-1)
            _close(p[yes] / (p[yes] + p[no]), result.p_match[0, 0, j, row].double(), 1e-5)
            moved = max(
                moved, abs(float(p[yes] / (p[yes] + p[no])) - float(result.baseline_p_match[row]))
            )
    assert moved > 1e-3
    attention = _attention_layers(tap)[0]
    with pytest.raises(ValueError, match=r"hold no recurrent state.*tap.state_layers"):
        sweep(tap, pairs, vectors, multipliers, [attention], modes=["both"], progress=False)


@pytest.mark.parametrize("name", ["causal_conv1d_update", "mamba2_chunk_scan"])
def test_a_function_the_modeling_file_no_longer_has_is_refused_at_attach(model, monkeypatch, name):
    module = __import__(statetap.adapters.adapter_for(model).modeling_module, fromlist=["x"])
    monkeypatch.delattr(module, name)
    with pytest.raises(UpstreamDrift, match=f"{name} does not exist any more"):
        statetap.attach(model)


@torch.no_grad()
def test_lenses_read_every_layer_through_the_attention_layers(model):
    """The logit lens at each layer == the final norm and unembedding of the residual stream
    after that block as the model's ``output_hidden_states`` holds it."""
    tap = statetap.attach(model)
    ids = _ids(2, 7)
    predictions = LogitLens(model).predictions(ids)
    hidden = model(ids, output_hidden_states=True).hidden_states
    for layer in range(tap.adapter.n_layers - 1):
        block = hidden[tap.adapter.hidden_states_index(layer)]
        _close(model.lm_head(tap.adapter.final_norm(block)), predictions[layer])
    _close(model(ids).logits, predictions[-1])
    assert torch.equal(TunedLens(model).predictions(ids), predictions)
