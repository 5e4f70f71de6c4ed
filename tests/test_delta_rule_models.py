"""The gated delta-rule hybrids (Qwen3-Next, OLMo-hybrid, Kimi Linear) against transformers' own
torch code.

Tiny models from configs with fixed seeds (``tests/_delta_rule_models.py``), each a delta layer,
an attention layer and a delta layer.  Every reference is the model's own forward with
transformers' torch delta rule and convolution forced (``transformers_torch_path``: whatever
fla or causal-conv1d would have been routed to), and the model's own hybrid cache read and
edited through its cache layers: logits with nothing requested, emitted states against the
cache after the prefix, a state injection against editing that cache between two tokens and
continuing with the model, padded rows against each row alone, and steered generation against a
greedy loop over the edited cache.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from _delta_rule_models import ARCHITECTURES, MODELS, STATE_LAYERS, VOCAB, build
from _delta_rule_models import transformers_torch_path as torch_path
from transformers import ByT5Tokenizer

import statetap
from statetap.adapters.upstream import UpstreamDrift
from statetap.extract import ExtractConfig, extract, load_extraction
from statetap.interp.elk.dataset import QuirkyPrompt
from statetap.interp.elk.features import quirky_features
from statetap.interp.lens import LogitLens, TunedLens
from statetap.interp.provenance import model_identity
from statetap.interp.steering import ContrastPairs, Prompts, SteeringVectors, mean_difference, sweep
from statetap.kernels.examples import rel_error

LENGTH = 11
#: transformers' cache-layer attribute holding each state component of a delta layer
CACHE_FIELDS = {"recurrent": "recurrent_states", "conv": "conv_states"}
#: greedy generation of every requested token (no end-of-sequence token), with its scores
GREEDY = dict(
    do_sample=False,
    eos_token_id=[],
    pad_token_id=0,
    output_scores=True,
    return_dict_in_generate=True,
)


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    """A tiny model; the test runs with transformers' torch delta rule and convolution forced
    (statetap's passes substitute their own over them)."""
    with torch_path(request.param):
        yield build(request.param)


@pytest.fixture(scope="module")
def tap(model):
    return statetap.attach(model)


def _ids(batch: int = 3, length: int = LENGTH) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length))


def _close(reference: torch.Tensor, value: torch.Tensor, tol: float = 1e-5) -> None:
    """float32 through chunked (statetap) and sequential or chunked (transformers) forms of the
    recurrence: equal to rounding, 1e-7..1e-6 relative."""
    assert reference.shape == value.shape, (reference.shape, value.shape)
    assert rel_error(reference, value) <= tol, rel_error(reference, value)


def _state(cache, site: str, layer: int) -> torch.Tensor:
    """``site`` of ``layer`` as transformers' own cache layer holds it (a view: writable)."""
    return getattr(cache.layers[layer], CACHE_FIELDS[site])[0]


@pytest.fixture
def delta_rule_calls(monkeypatch):
    """The token counts ``L`` of every call of ``statetap.kernels.delta_rule`` (the sequence op)
    and ``delta_rule_step`` (``L = 1``, the decode step) during the test, by name."""
    calls = {"delta_rule": [], "delta_rule_step": []}

    def counted(name: str, length_of):
        function = getattr(statetap.kernels, name)

        def call(*args, **kwargs):
            calls[name].append(length_of(args[0]))
            return function(*args, **kwargs)

        monkeypatch.setattr(statetap.kernels, name, call)

    counted("delta_rule", lambda query: query.shape[1])
    counted("delta_rule_step", lambda query: 1)
    return calls


def _greedy(model, cache, logits: torch.Tensor, steps: int, after_each=None):
    """Greedy tokens from ``logits`` ``[B, V]`` feeding each back after ``cache`` (in place)
    with the model's own forward; ``after_each(cache)`` edits the cache after each fed token.
    Returns the tokens ``[B, steps]`` and the logits each step was chosen from."""
    tokens, scores = [], [logits]
    for k in range(steps):
        tokens.append(scores[-1].argmax(-1))
        if k == steps - 1:
            break
        scores.append(model(tokens[-1][:, None], cache=cache, use_cache=True).logits[:, -1])
        if after_each is not None:
            after_each(cache)
    return torch.stack(tokens, 1), scores


@torch.no_grad()
def test_nothing_requested_reproduces_the_logits(model, tap):
    ids = _ids()
    _close(model(ids).logits, tap.run(ids).logits)


@torch.no_grad()
def test_passes_run_whatever_transformers_routes_the_functions_to(model):
    """With fla-core installed transformers may route the delta rule to fla's Triton kernels
    even on a CPU (``RuntimeError: 0 active drivers``): statetap's passes call none of the
    functions it substitutes, so attach and a run work and give the torch path's logits."""
    ids = _ids()
    reference = model(ids).logits
    _, _, _, modeling, functions = ARCHITECTURES[_name(model)]
    module = importlib.import_module(modeling)

    def unusable(*args, **kwargs):
        raise RuntimeError("0 active drivers ([]). There should only be one.")

    saved = {name: getattr(module, name) for name in functions}
    try:
        for name in functions:
            setattr(module, name, unusable)
        with pytest.raises(RuntimeError, match="0 active drivers"):
            model(ids)
        _close(reference, statetap.attach(model).run(ids).logits)
    finally:
        for name, function in saved.items():
            setattr(module, name, function)


def _name(model) -> str:
    return next(name for name, entry in ARCHITECTURES.items() if isinstance(model, entry[1]))


def test_state_sites_exist_on_the_delta_layers_only(model, tap):
    assert tap.state_layers == STATE_LAYERS
    assert tap.adapter.state_sites == ("recurrent", "conv")
    ids = _ids()
    with pytest.raises(ValueError, match=r"no recurrent state .* tap.state_layers = \[0, 2\]"):
        tap.run(ids, emit=[statetap.Emit("recurrent", 1)])
    with pytest.raises(ValueError, match=r"tap.state_layers = \[0, 2\]"):
        tap.run(ids, inject=[statetap.Inject("conv", 1, torch.zeros(tap.site_shape("conv")))])
    with torch.no_grad():
        everything = tap.run(ids, emit=[statetap.Emit("state"), statetap.Emit("mixer")])
    expected = {(site, layer) for site in CACHE_FIELDS for layer in STATE_LAYERS}
    expected |= {("mixer", layer) for layer in range(3)}
    assert set(everything.activations) == expected


@torch.no_grad()
@pytest.mark.parametrize("t", [0, 4, LENGTH - 1])
def test_emitted_state_equals_the_models_cache_after_the_prefix(model, tap, t):
    ids = _ids()
    result = tap.run(ids, emit=[statetap.Emit("state", positions=[t, -1])], keep_state=True)
    prefix = model(ids[:, : t + 1], use_cache=True).cache
    whole = model(ids, use_cache=True).cache
    for site in CACHE_FIELDS:
        for layer in STATE_LAYERS:
            emitted = result[site, layer]
            assert emitted.dtype == torch.float32
            assert emitted.shape[2:] == tap.site_shape(site)
            _close(_state(prefix, site, layer).float(), emitted[:, 0])
            _close(_state(whole, site, layer).float(), emitted[:, 1])
            _close(_state(whole, site, layer).float(), result.state.get(site, layer))
    # the attention layer's keys and values are the model's own
    _close(whole.layers[1].keys, result.state.cache.layers[1].keys)
    _close(whole.layers[1].values, result.state.cache.layers[1].values)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["add", "set"])
@pytest.mark.parametrize("site", ["recurrent", "conv"])
def test_state_injection_equals_editing_the_cache_between_two_tokens(model, tap, site, mode):
    """The paper's procedure with the model's own code: prefill to t, edit the delta layer's
    entry of the hybrid cache, feed the rest (which reads the attention layer's keys and
    values too); the first delta layer, so that every later layer sees the change."""
    ids, t, layer = _ids(), 5, STATE_LAYERS[0]
    shape = tap.site_shape(site)
    value = torch.randn(*shape)
    scale = torch.tensor([0.5, -1.0, 2.0]) if mode == "add" else None
    inject = statetap.Inject(site, layer, value, positions=t, mode=mode, scale=scale)
    injected = tap.run(ids, inject=[inject]).logits
    prefix = model(ids[:, : t + 1], use_cache=True)
    state = _state(prefix.cache, site, layer)
    if mode == "set":
        state.copy_(value.expand_as(state))
    else:
        state.add_(scale.view(-1, *[1] * len(shape)) * value)
    rest = model(ids[:, t + 1 :], cache=prefix.cache, use_cache=True).logits
    _close(prefix.logits, injected[:, : t + 1])
    _close(rest, injected[:, t + 1 :])
    assert rel_error(model(ids).logits[:, t + 1 :], injected[:, t + 1 :]) > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("site", ["residual", "mixer"])
def test_residual_and_mixer_sites_equal_forward_hooks(model, tap, site):
    """At every layer, the attention layer included (its mixer returns a tuple): emitting the
    site gives what a hook on the model reads, and injecting it equals a hook that adds."""
    ids, t = _ids(), 6
    value = torch.randn(tap.site_shape(site))
    for layer in range(3):
        module = tap.adapter.mixer(layer) if site == "mixer" else model.model.layers[layer]
        seen = []

        def add_at_t(module, args, out, seen=seen):
            tensor = (out[0] if isinstance(out, tuple) else out).clone()
            tensor[:, t] += 3.0 * value
            seen.append(tensor)  # what the site holds after the injection
            return (tensor, *out[1:]) if isinstance(out, tuple) else tensor

        handle = module.register_forward_hook(add_at_t)
        try:
            hooked = model(ids).logits
        finally:
            handle.remove()
        result = tap.run(
            ids,
            emit=[statetap.Emit(site, layer, positions="all")],
            inject=[statetap.Inject(site, layer, value, positions=t, scale=3.0)],
        )
        _close(hooked, result.logits)
        _close(seen[0], result[site, layer])


@torch.no_grad()
def test_steered_generation_equals_a_greedy_loop_on_the_edited_cache(model, tap, delta_rule_calls):
    """tap.generate with the last layer's matrix state injected at the last prompt token, and
    the first layer's matrix state and convolution window at every fed-back token, each of
    which runs the in-place decode step ``delta_rule_step``, == the model's own greedy loop
    editing its cache at the same points; the states emitted by the steps are that cache's."""
    prompt, new, layer, first = _ids(2, 6), 4, STATE_LAYERS[-1], STATE_LAYERS[0]
    recurrent = torch.randn(tap.site_shape("recurrent"))
    decoded = torch.randn(tap.site_shape("recurrent"))
    window = torch.randn(tap.site_shape("conv"))
    options = GREEDY | dict(max_new_tokens=new, attention_mask=torch.ones_like(prompt))
    generated = tap.generate(
        prompt,
        inject=[
            statetap.Inject("recurrent", layer, recurrent, positions=-1, scale=1.5),
            statetap.Inject("recurrent", first, decoded, positions="new", scale=0.25),
            statetap.Inject("conv", first, window, positions="new", scale=0.5),
        ],
        emit=[statetap.Emit("recurrent", layer, positions="new")],
        **options,
    )
    # the prompt through the sequence op, each fed-back token through the step, per delta layer
    assert delta_rule_calls["delta_rule"] == [prompt.shape[1]] * len(STATE_LAYERS)
    assert len(delta_rule_calls["delta_rule_step"]) == (new - 1) * len(STATE_LAYERS)
    out = model(prompt, use_cache=True)
    _state(out.cache, "recurrent", layer).add_(1.5 * recurrent)
    states = []

    def edit(cache):
        _state(cache, "recurrent", first).add_(0.25 * decoded)
        _state(cache, "conv", first).add_(0.5 * window)
        states.append(_state(cache, "recurrent", layer).clone())

    tokens, scores = _greedy(model, out.cache, out.logits[:, -1], new, edit)
    assert torch.equal(generated.sequences, torch.cat([prompt, tokens], 1))
    for mine, theirs in zip(generated.output.scores, scores, strict=True):
        _close(theirs, mine)
    _close(torch.stack(states, 1), generated["recurrent", layer])
    plain = model.generate(prompt, **options)
    assert rel_error(plain.scores[-1], generated.output.scores[-1]) > 1e-3


@torch.no_grad()
def test_steered_generation_from_left_padded_prompts_equals_each_prompt_alone(model, tap):
    """Generation from a left-padded batch with a state injection at each prompt's last token:
    every row generates, with the same scores, what its prompt generates alone."""
    prompt, new = _ids(3, 6), 3
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0
    mask[2, :1] = 0
    value = torch.randn(tap.site_shape("recurrent"))
    inject = [statetap.Inject("recurrent", STATE_LAYERS[0], value, positions=-1)]
    options = GREEDY | dict(max_new_tokens=new)
    batch = tap.generate(prompt, attention_mask=mask, inject=inject, **options)
    for row in range(3):
        real = prompt[row : row + 1, mask[row] == 1]
        alone = tap.generate(real, attention_mask=torch.ones_like(real), inject=inject, **options)
        assert torch.equal(alone.sequences[0, -new:], batch.sequences[row, -new:])
        for mine, theirs in zip(batch.output.scores, alone.output.scores, strict=True):
            _close(theirs[0], mine[row])


@torch.no_grad()
def test_left_padded_rows_equal_each_row_alone(model, tap):
    """A pad token's input is zeroed: no bias anywhere before the recurrence, so it writes
    nothing into the window or the (zero) state, and a left-padded row computes exactly what
    the row alone computes, its final states included."""
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    batch = tap.run(
        ids, attention_mask=mask, emit=[statetap.Emit("state", positions=-1)], keep_state=True
    )
    for row in range(ids.shape[0]):
        real = int(mask[row].sum())
        alone = model(ids[row : row + 1, -real:], use_cache=True)
        _close(alone.logits[0], batch.logits[row, -real:])
        for site in CACHE_FIELDS:
            for layer in STATE_LAYERS:
                own = _state(alone.cache, site, layer).float()[0]
                _close(own, batch[site, layer][row, 0])
                _close(own, batch.state.get(site, layer)[row])


@torch.no_grad()
def test_right_padding_keeps_the_outputs_and_what_padding_would_change_is_refused(model, tap):
    """Right pads come after a row's real tokens: its outputs and the states emitted at real
    tokens are exact, but each pad decays the state, so the state after the row (keep_state)
    and padding in a pass that continues from a state are refused."""
    ids = _ids(2)
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    result = tap.run(ids, attention_mask=mask, emit=[statetap.Emit("recurrent", 0, positions=-1)])
    alone = model(ids[1:, :-4], use_cache=True)
    _close(alone.logits[0], result.logits[1, :-4])
    _close(_state(alone.cache, "recurrent", 0)[0], result["recurrent", 0][1, 0])
    with pytest.raises(ValueError, match="pad on the left"):
        tap.run(ids, attention_mask=mask, keep_state=True)
    state = tap.run(ids, keep_state=True).state
    with pytest.raises(ValueError, match="continuing from a state must have no padding"):
        tap.run(ids, attention_mask=mask.flip(1), state=state)
    starts = torch.tensor([0, 4, LENGTH], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"packed sequences \(cu_seq_lens_k, cu_seq_lens_q\)"):
        tap.run(ids[:1], cu_seq_lens_q=starts, cu_seq_lens_k=starts)


@torch.no_grad()
@pytest.mark.parametrize("rest", [1, 4], ids=["one-token", "several-tokens"])
def test_resuming_from_a_state_equals_one_pass(model, tap, rest, delta_rule_calls):
    """A continuation of one token runs the decode step, emitting there; several tokens the
    sequence op."""
    ids, cut = _ids(), LENGTH - rest
    whole = tap.run(ids, emit=[statetap.Emit("state", positions=[cut - 1, cut])])
    prompt = tap.run(ids[:, :cut], keep_state=True)
    del delta_rule_calls["delta_rule"][:], delta_rule_calls["delta_rule_step"][:]
    resumed = tap.run(ids[:, cut:], state=prompt.state, emit=[statetap.Emit("state", positions=0)])
    steps = len(STATE_LAYERS) if rest == 1 else 0
    assert len(delta_rule_calls["delta_rule_step"]) == steps
    assert len(delta_rule_calls["delta_rule"]) == len(STATE_LAYERS) - steps
    _close(model(ids).logits[:, cut:], resumed.logits)
    for site in CACHE_FIELDS:
        for layer in STATE_LAYERS:
            _close(whole[site, layer][:, 0], prompt.state.get(site, layer))
            _close(whole[site, layer][:, 1], resumed[site, layer][:, 0])


def test_attach_refuses_a_model_that_no_longer_calls_a_substitution(model):
    """The probe pass at attach proves each substituted function exists and runs."""
    name = _name(model)
    _, _, _, modeling, functions = ARCHITECTURES[name]
    module = importlib.import_module(modeling)
    chunk = functions[0]
    saved = getattr(module, chunk)
    delattr(module, chunk)
    try:
        with pytest.raises(UpstreamDrift, match=f"{chunk} does not exist any more"):
            statetap.attach(model)
    finally:
        setattr(module, chunk, saved)
    mixer = type(statetap.attach(model).adapter.mixer(0))
    forward = mixer.forward

    def skip_the_delta_rule(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        return torch.zeros_like(hidden_states)  # a rewritten mixer that calls none of them

    mixer.forward = skip_the_delta_rule
    try:
        with pytest.raises(UpstreamDrift, match="was not called during a prefill"):
            statetap.attach(model)
    finally:
        mixer.forward = forward


@torch.no_grad()
def test_resuming_after_a_left_padded_prompt_equals_each_row_alone(model, tap):
    """The pads of a left-padded prompt leave the delta state at zero and stay masked in the
    attention layer's keys when the snapshot continues."""
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    cut = 7
    prompt = tap.run(ids[:, :cut], attention_mask=mask[:, :cut], keep_state=True)
    resumed = tap.run(ids[:, cut:], state=prompt.state)
    for row in range(3):
        pads = int((mask[row] == 0).sum())
        alone = model(ids[row : row + 1, pads:]).logits[0]
        _close(alone[cut - pads :], resumed.logits[row])


# ------------------------------------------------------- the methods on top of the model layer
TOKENIZER = ByT5Tokenizer(extra_ids=0)  # byte x -> token x + 3


@pytest.fixture
def byte_model():
    """Qwen3-Next (grouped heads) over the byte tokenizer, transformers' torch path forced (per
    test, so that the patch is undone before the module-scoped ``model``'s)."""
    with torch_path("qwen3_next"):
        yield build("qwen3_next", len(TOKENIZER))


def _own_states(model, ids: list[int]) -> dict[tuple[str, int], torch.Tensor]:
    """Every state component of every delta layer after ``ids``, from the model's own cache."""
    cache = model(torch.tensor([ids]), use_cache=True).cache
    return {(s, layer): _state(cache, s, layer)[0] for s in CACHE_FIELDS for layer in STATE_LAYERS}


@torch.no_grad()
def test_state_steering_vectors_and_sweep_equal_the_papers_procedure(model, tap):
    """Steering vectors hold the state components of the delta layers only, each the mean
    difference of the model's own cache; state-mode steering == prefill all but the last
    token, add m * delta to the delta layer's state in the model's cache, step the last one."""
    rows = [torch.randint(3, VOCAB, (int(n),)).tolist() for n in torch.randint(4, 9, (3,))]
    answers = torch.randint(3, VOCAB, (3, 2))
    answers[:, 1] = (answers[:, 0] + 1 - 3) % (VOCAB - 3) + 3  # differ in every row
    pairs = ContrastPairs(Prompts(rows), answers[:, 0], answers[:, 1])
    positive, negative = pairs.completions()
    vectors = mean_difference(tap, positive, negative, batch_size=3, progress=False)
    expected = {("residual", layer) for layer in range(3)}
    expected |= {(site, layer) for site in CACHE_FIELDS for layer in STATE_LAYERS}
    assert set(vectors.vectors) == expected
    hand = {}
    for sign, prompts in ((1.0, positive), (-1.0, negative)):
        for ids in prompts.ids:
            for key, value in _own_states(model, list(ids)).items():
                hand[key] = hand.get(key, 0.0) + sign * value.double() / len(prompts.ids)
    for key, value in hand.items():
        _close(value.float(), vectors[key])
    steer = {key: torch.randn(tap.site_shape(key[0])) for key in expected}
    steer = SteeringVectors(steer, dict(identity=model_identity(model)))
    multipliers = [-1.5, 2.0]
    result = sweep(tap, pairs, steer, multipliers, list(STATE_LAYERS), ["state"], progress=False)
    moved = 0.0
    for row, ids in enumerate(pairs.prompts.ids):
        yes, no = int(pairs.matching[row]), int(pairs.not_matching[row])
        for i, layer in enumerate(STATE_LAYERS):
            for j, m in enumerate(multipliers):
                prefix = model(torch.tensor([ids[:-1]]), use_cache=True)
                for site in CACHE_FIELDS:
                    _state(prefix.cache, site, layer)[0] += m * steer[site, layer]
                step = model(torch.tensor([ids[-1:]]), cache=prefix.cache, use_cache=True)
                p = step.logits[0, -1].double().softmax(-1)
                _close(p[yes] / (p[yes] + p[no]), result.p_match[0, i, j, row].double())
                moved = max(
                    moved, abs(float(p[yes] / (p[yes] + p[no]) - result.baseline_p_match[row]))
                )
    assert moved > 1e-3  # the edits changed the answer


def _block_outputs(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream after each block of the model's own forward of ``ids``."""
    outputs = []
    handles = [
        block.register_forward_hook(lambda module, args, out: outputs.append(out))
        for block in model.model.layers
    ]
    try:
        model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return [out[0] if isinstance(out, tuple) else out for out in outputs]


@torch.no_grad()
def test_lenses_read_every_layer_through_the_attention_layer(model):
    """The logit lens at each layer == the model's final norm and unembedding of the residual
    stream after that block (the attention layer's too); the last layer gives the logits."""
    ids = _ids(2, 7)
    predictions = LogitLens(model).predictions(ids)
    assert predictions.shape == (3, 2, 7, VOCAB)
    for layer, hidden in enumerate(_block_outputs(model, ids)):
        _close(model.lm_head(model.model.norm(hidden)), predictions[layer])
    _close(model(ids).logits, predictions[-1])
    assert torch.equal(TunedLens(model).predictions(ids), predictions)


@torch.no_grad()
def test_extraction_stores_each_texts_own_cache(byte_model, tmp_path):
    """``statetap extract`` of the state at the first and last token of each text == the
    model's own cache after that prefix, for the delta layers only."""
    texts = ["hello delta", "ab", "gated rule!"]
    config = ExtractConfig(out=tmp_path / "run", sites=("state",), positions=(0, -1), batch_size=2)
    extract(byte_model, TOKENIZER, texts, config, "tiny-qwen3-next")
    _, tensors = load_extraction(tmp_path / "run")
    assert set(tensors) == {f"{s}.{layer}" for s in CACHE_FIELDS for layer in STATE_LAYERS} | {
        "row",
        "positions",
    }
    for row, text in enumerate(texts):
        ids = TOKENIZER(text, add_special_tokens=False)["input_ids"]
        for slot, prefix in enumerate((ids[:1], ids)):
            for (site, layer), value in _own_states(byte_model, prefix).items():
                _close(value.float(), tensors[f"{site}.{layer}"][row, slot].float())


@torch.no_grad()
def test_elk_features_read_the_residual_stream_and_the_delta_layers_states(byte_model):
    """Quirky-probe features of a hybrid: the residual stream after every block at the prompt's
    last token (== the blocks' outputs in the model's own forward) and each state component at
    the delta layers only (== the model's own cache after the prompt), numbered by layer."""
    examples = [
        QuirkyPrompt(text, ("0", "1"), "Alice", bool(i % 2), bool(i % 2), False, 0.0)
        for i, text in enumerate(["1 + 1 = 2. Alice:", "2 + 2 = 5. Alice:", "3 + 4 = 7. Bob:"])
    ]
    tap = statetap.attach(byte_model)
    found = quirky_features(tap, TOKENIZER, examples, progress=False)
    assert {site: found.layers[site] for site in CACHE_FIELDS} == {
        site: list(STATE_LAYERS) for site in CACHE_FIELDS
    }
    for n, example in enumerate(examples):
        ids = TOKENIZER(example.text, add_special_tokens=False)["input_ids"]
        outputs = _block_outputs(byte_model, torch.tensor([ids]))
        expected = torch.stack([output[0, -1] for output in outputs])
        _close(expected, found.prompt["residual"][n])
        for (site, layer), value in _own_states(byte_model, ids).items():
            _close(value.flatten().float(), found.prompt[site][n, found.at(site, layer)])
