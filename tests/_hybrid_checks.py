"""Exactness checks for the hybrid adapters (Mamba layers beside attention), shared by the test
modules of each family: ``from _hybrid_checks import *`` (the ``test_*`` functions below) in a
module that defines a ``tap`` fixture (``statetap.attach`` of a tiny hybrid causal LM in eval
mode, attached once per model) and pytest runs them on it.

Every reference is the model's own transformers code path, never statetap: logits and
``output_hidden_states`` of a plain forward, the model's own cache (read and edited through
transformers' cache layers: ``recurrent_states`` / ``conv_states``, keys and values), and a
greedy loop of plain one-token forwards.  A multi-token pass from an edited cache is compared
with the model's own multi-token continuation on the Mamba-2 hybrids (its chunked scan clamps
the time step as a prefill does, the one-token update does not) and with one-token forwards on
the Mamba-1 hybrids (Jamba, Zamba), whose multi-token continuation starts from a zero state.
"""

from __future__ import annotations

import pytest
import torch
from _extract_models import TOKENIZER as BYTES
from _extract_models import random_texts
from _greedy import SCORED

import statetap
from statetap.adapters.mamba import Mamba2Adapter
from statetap.extract import ExtractConfig, extract, load_extraction
from statetap.interp.elk.dataset import QuirkyPrompt
from statetap.interp.elk.features import quirky_features
from statetap.interp.lens import LogitLens
from statetap.interp.steering import Prompts, generate_steered, mean_difference
from statetap.kernels.examples import rel_error

VOCAB, LENGTH = len(BYTES), 11  # the byte tokenizer's ids, for the extraction

#: transformers' cache-layer attribute holding each state component of a Mamba layer
CACHE_FIELDS = {"ssm": "recurrent_states", "conv": "conv_states"}


def build(hybrids: dict, name: str, **changes):
    """The tiny eval-mode model of row ``name`` of a test module's table ``hybrids`` (``name ->
    (config class, model class, config arguments, ...)``), seeded; ``changes`` override the
    arguments."""
    torch.manual_seed(1234)
    config_class, model_class, arguments = hybrids[name][:3]
    return model_class(config_class(vocab_size=VOCAB, **arguments | changes)).eval()


def ids(batch: int = 3, length: int = LENGTH) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length))


def left_padded(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch whose row 1 has 3 pads on the left and row 2 one."""
    tokens = ids(batch)
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0
    mask[2, :1] = 0
    return tokens, mask


def close(reference: torch.Tensor, value: torch.Tensor, tol: float = 1e-6) -> None:
    assert reference.shape == value.shape, (reference.shape, value.shape)
    assert rel_error(reference, value) <= tol, rel_error(reference, value)


def model_state(cache, site: str, layer: int) -> torch.Tensor:
    """``site`` of ``layer`` as transformers' own cache layer holds it (a view: writable)."""
    return getattr(cache.layers[layer], CACHE_FIELDS[site])[0]


def step_by_step(model, cache, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of ``tokens`` ``[B, L']`` fed one at a time after ``cache`` (updated in place), at
    the positions ``generate`` gives them (``BambaModel`` numbers every forward from 0 without
    them: docs/models.md)."""
    logits, start = [], int(cache.get_seq_length())  # a counter the cache updates in place
    for t in range(tokens.shape[1]):
        position = torch.full((tokens.shape[0], 1), start + t)
        step = model(tokens[:, t : t + 1], cache=cache, use_cache=True, position_ids=position)
        logits.append(step.logits)
    return torch.cat(logits, 1)


def continuation(tap, cache, tokens: torch.Tensor) -> torch.Tensor:
    """The model's own logits of ``tokens`` ``[B, L']`` after ``cache`` (updated in place) as a
    multi-token pass computes them: one forward for the Mamba-2 hybrids, whose chunked scan
    continues the cached state and clamps the time step to ``dt_limit`` as a prefill does (their
    one-token update does not clamp: Zamba2's ``time_step_min`` makes the two differ); token by
    token for the Mamba-1 hybrids, whose multi-token forward restarts the scan from zero."""
    if not isinstance(tap.adapter, Mamba2Adapter):
        return step_by_step(tap.model, cache, tokens)
    start = int(cache.get_seq_length())
    positions = (torch.arange(tokens.shape[1]) + start).expand(tokens.shape[0], -1)
    return tap.model(tokens, cache=cache, use_cache=True, position_ids=positions).logits


def own_cache(model, tokens: torch.Tensor):
    """The model's own cache after a plain forward over ``tokens``."""
    return model(tokens, use_cache=True).cache


@torch.no_grad()
def attention_layers(tap) -> list[int]:
    """The layers whose cache holds keys and values (an attention block, shared or not)."""
    return [
        layer
        for layer, entry in enumerate(own_cache(tap.model, ids(1, 2)).layers)
        if isinstance(getattr(entry, "keys", None), torch.Tensor)
    ]


# ---------------------------------------------------------------- the checks (pytest tests)
@torch.no_grad()
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_nothing_requested_reproduces_the_logits(tap, padded):
    tokens, mask = left_padded() if padded else (ids(), None)
    plain = tap.model(tokens, attention_mask=mask).logits
    result = tap.run(tokens, attention_mask=mask)
    close(plain, result.logits)


@torch.no_grad()
def test_residual_equals_output_hidden_states(tap):
    tokens = ids()
    model = tap.model
    plain = model(tokens, output_hidden_states=True)
    result = tap.run(tokens, emit=[statetap.Emit("residual", positions="all")])
    close(plain.logits, result.logits)
    layout = tap.adapter.hidden_states_layout
    assert len(layout) == len(plain.hidden_states) and "other" not in layout
    for entry, hidden in zip(layout, plain.hidden_states):
        if isinstance(entry, int):
            close(hidden, result["residual", entry])


@torch.no_grad()
def test_emitted_state_equals_the_models_cache_after_the_prefix(tap):
    """States emitted after tokens 0, 4 and the last == the model's own cache after each prefix;
    the kept state holds the model's own recurrent states, keys and values."""
    model = tap.model
    tokens, times = ids(), [0, 4, LENGTH - 1]
    result = tap.run(tokens, emit=[statetap.Emit("state", positions=times)], keep_state=True)
    assert tap.state_layers and set(tap.state_layers) <= set(range(tap.adapter.n_layers))
    for slot, t in enumerate(times):
        prefix = own_cache(model, tokens[:, : t + 1])
        for site in tap.adapter.state_sites:
            for layer in tap.state_layers:
                emitted = result[site, layer]
                assert emitted.dtype == torch.float32
                close(model_state(prefix, site, layer).float(), emitted[:, slot], 1e-5)
                if t == LENGTH - 1:
                    close(model_state(prefix, site, layer).float(), result.state.get(site, layer))
    whole = own_cache(model, tokens)
    for layer in attention_layers(tap):
        close(whole.layers[layer].keys, result.state.cache.layers[layer].keys, 1e-5)
        close(whole.layers[layer].values, result.state.cache.layers[layer].values, 1e-5)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["add", "set"])
def test_state_injection_equals_editing_the_cache_between_two_tokens(tap, mode):
    model = tap.model
    tokens, t = ids(), 5
    layer = tap.state_layers[len(tap.state_layers) // 2]
    for site in tap.adapter.state_sites:
        shape = tap.site_shape(site)
        value = 3.0 * torch.randn(*shape)
        scale = torch.tensor([0.5, -1.0, 2.0]) if mode == "add" else None
        injected = tap.run(
            tokens,
            inject=[statetap.Inject(site, layer, value, positions=t, mode=mode, scale=scale)],
        )
        # The paper's procedure: prefill to t, edit the model's own cache, feed the rest.
        prefix = model(tokens[:, : t + 1], use_cache=True)
        state = model_state(prefix.cache, site, layer)
        if mode == "set":
            state.copy_(value.expand_as(state))
        else:
            state.add_(scale.view(-1, *[1] * len(shape)) * value)
        rest = continuation(tap, prefix.cache, tokens[:, t + 1 :])
        close(prefix.logits, injected.logits[:, : t + 1])
        close(rest, injected.logits[:, t + 1 :], 1e-5)
        assert rel_error(model(tokens).logits[:, t + 1 :], injected.logits[:, t + 1 :]) > 1e-4


@torch.no_grad()
@pytest.mark.parametrize("site", ["residual", "mixer"])
def test_residual_and_mixer_injection_equal_a_forward_hook(tap, site):
    model = tap.model
    tokens, t = ids(), 6
    value = torch.randn(tap.site_shape(site))

    def add_at_t(tensor):
        tensor = tensor.clone()
        tensor[:, t] += 3.0 * value
        return tensor

    # a Mamba layer and a layer with keys and values (the same one on Falcon-H1)
    for layer in sorted({tap.state_layers[0], attention_layers(tap)[0]}):
        if site == "residual":
            handle = tap.adapter.following(layer).register_forward_pre_hook(
                lambda module, args: (add_at_t(args[0]), *args[1:])
            )
        else:
            handle = tap.adapter.mixer(layer).register_forward_hook(
                lambda module, args, out: (
                    (add_at_t(out[0]), *out[1:]) if isinstance(out, tuple) else add_at_t(out)
                )
            )
        try:
            hooked = model(tokens).logits
        finally:
            handle.remove()
        result = tap.run(
            tokens, inject=[statetap.Inject(site, layer, value, positions=t, scale=3.0)]
        )
        close(hooked, result.logits)
        close(model(tokens).logits[:, :t], result.logits[:, :t])


@torch.no_grad()
def test_padded_rows_equal_each_row_alone(tap):
    """A left-padded batch: every row's logits and final states equal the row run alone."""
    model = tap.model
    tokens, mask = left_padded()
    batch = tap.run(
        tokens, attention_mask=mask, emit=[statetap.Emit("state", positions=-1)], keep_state=True
    )
    for row in range(tokens.shape[0]):
        real = int(mask[row].sum())
        alone = tokens[row : row + 1, -real:]
        single = model(alone, use_cache=True)
        close(single.logits[0], batch.logits[row, -real:], 1e-5)
        for site in tap.adapter.state_sites:
            for layer in tap.state_layers:
                own = model_state(single.cache, site, layer).float()[0]
                close(own, batch[site, layer][row, 0], 1e-5)
                close(own, batch.state.get(site, layer)[row], 1e-5)


@torch.no_grad()
@pytest.mark.parametrize("rest", [1, 4], ids=["one-token", "several-tokens"])
def test_resuming_from_a_state_equals_one_pass(tap, rest):
    """keep_state then resume: the hybrid cache (recurrent states and keys/values) carries on."""
    model = tap.model
    tokens = ids()
    cut = LENGTH - rest
    whole = tap.run(tokens, emit=[statetap.Emit("state", positions=[cut - 1, cut])])
    prompt = tap.run(tokens[:, :cut], keep_state=True)
    resumed = tap.run(
        tokens[:, cut:], state=prompt.state, emit=[statetap.Emit("state", positions=0)]
    )
    again = tap.run(tokens[:, cut:], state=prompt.state)  # the snapshot is left as it was
    close(model(tokens).logits[:, cut:], resumed.logits, 1e-5)
    assert torch.equal(resumed.logits, again.logits)
    for site in tap.adapter.state_sites:
        for layer in tap.state_layers:
            close(whole[site, layer][:, 0], prompt.state.get(site, layer), 1e-5)
            close(whole[site, layer][:, 1], resumed[site, layer][:, 0], 1e-5)


@torch.no_grad()
def test_fork_and_edit_equal_injections_in_one_pass(tap):
    """A multiplier sweep from one prompt: fork(3) + edit == Inject with each scale."""
    tokens, cut, layer = ids(2), 6, tap.state_layers[-1]
    site = tap.adapter.state_sites[0]
    value = torch.randn(tap.site_shape(site))
    scales = torch.tensor([-1.0, 0.0, 2.0])
    sweep = tap.run(tokens[:, :cut], keep_state=True).state.fork(3)
    sweep.edit(site, layer, value, scale=scales.repeat(2))
    branched = tap.run(tokens[:, cut:].repeat_interleave(3, 0), state=sweep).logits
    for i, scale in enumerate(scales.tolist()):
        inject = statetap.Inject(site, layer, value, positions=cut - 1, scale=scale)
        single = tap.run(tokens, inject=[inject]).logits[:, cut:]
        close(single, branched[i::3], 1e-5)


@torch.no_grad()
def test_steered_generation_equals_a_greedy_loop_on_the_edited_cache(tap):
    """tap.generate with a state injection at the last prompt token == the model's own greedy
    loop after editing its cache there (keys and values carried by the model's cache)."""
    model = tap.model
    prompt, new, layer = ids(2, 6), 4, tap.state_layers[0]
    value = 2.0 * torch.randn(tap.site_shape("ssm"))
    options = SCORED | dict(max_new_tokens=new, attention_mask=torch.ones_like(prompt))
    generated = tap.generate(
        prompt,
        inject=[statetap.Inject("ssm", layer, value, positions=-1, scale=1.5)],
        emit=[statetap.Emit("ssm", layer, positions="new")],
        **options,
    )
    out = model(prompt, use_cache=True)
    cache = out.cache
    model_state(cache, "ssm", layer).add_(1.5 * value)
    tokens, scores, states = [], [out.logits[:, -1]], []
    for k in range(new):
        tokens.append(scores[-1].argmax(-1))
        if k == new - 1:
            break
        scores.append(step_by_step(model, cache, tokens[-1][:, None])[:, -1])
        states.append(model_state(cache, "ssm", layer).float().clone())
    assert torch.equal(generated.sequences, torch.cat([prompt, torch.stack(tokens, 1)], 1))
    for mine, theirs in zip(generated.output.scores, scores):
        close(theirs, mine, 1e-5)
    close(torch.stack(states, 1), generated["ssm", layer], 1e-5)
    plain = model.generate(prompt, **options)
    # the first new token reads the prompt's last output, before the injection acts
    close(plain.scores[0], generated.output.scores[0])
    assert rel_error(plain.scores[1], generated.output.scores[1]) > 1e-4


def check_padding_refused(model, bias_name: str) -> None:
    """A model whose Mamba input projection has a bias does not honour padding (the bias of a
    pad token enters the convolution window of the first real tokens): the padded row differs
    from the row alone, and statetap refuses the padded batch, naming the bias."""
    tokens, mask = left_padded()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(".in_proj"):  # transformers initialises the biases to zero
                module.bias.normal_()
        padded = model(tokens, attention_mask=mask).logits[1, 3:]
        alone = model(tokens[1:2, 3:]).logits[0]
    assert rel_error(alone, padded) > 1e-4  # the model itself gets padded rows wrong
    tap = statetap.attach(model)
    with pytest.raises(ValueError, match=bias_name):
        tap.run(tokens, attention_mask=mask)
    tap.run(tokens, attention_mask=torch.ones_like(tokens))  # no padding: runs


@torch.no_grad()
def test_resuming_after_a_left_padded_prompt_equals_each_row_alone(tap):
    """The snapshot of a left-padded prompt continues each row as the row alone would: the
    pads' cached keys stay masked, the states never saw them."""
    model = tap.model
    tokens, mask = left_padded()
    cut = 7
    prompt = tap.run(tokens[:, :cut], attention_mask=mask[:, :cut], keep_state=True)
    resumed = tap.run(tokens[:, cut:], state=prompt.state)
    for row in range(tokens.shape[0]):
        pads = int((mask[row] == 0).sum())
        alone = model(tokens[row : row + 1, pads:]).logits[0]
        close(alone[cut - pads :], resumed.logits[row], 1e-5)


# ---------------------------------------------------------------- the layers above the adapters
@torch.no_grad()
def test_extract_stores_every_residual_and_the_state_layers_states(tap, tmp_path):
    """``statetap extract`` at every token: residuals equal ``output_hidden_states``, states
    (stored for the state layers only) the model's own cache after each prefix."""
    model = tap.model
    texts = random_texts([9, 2, 13], seed=5)
    config = ExtractConfig(out=tmp_path, positions="0:64", batch_size=2, progress=False)
    extract(model, BYTES, texts, config, "hybrid")
    _, tensors = load_extraction(tmp_path)
    expected = {f"residual.{layer}" for layer in range(tap.adapter.n_layers)}
    expected |= {
        f"{site}.{layer}" for site in tap.adapter.state_sites for layer in tap.state_layers
    }
    assert {name for name in tensors if "." in name} == expected
    offsets = tensors["offsets"]
    for row, text in enumerate(texts):
        stored = slice(int(offsets[row]), int(offsets[row + 1]))
        tokens = torch.tensor([BYTES(text, add_special_tokens=False)["input_ids"]])
        hidden = model(tokens, output_hidden_states=True).hidden_states
        for index, entry in enumerate(tap.adapter.hidden_states_layout):
            if isinstance(entry, int):
                close(hidden[index][0], tensors[f"residual.{entry}"][stored])
        for t in (0, tokens.shape[1] - 1):
            cache = own_cache(model, tokens[:, : t + 1])
            for site in tap.adapter.state_sites:
                for layer in tap.state_layers:
                    own = model_state(cache, site, layer)[0].float()
                    close(own, tensors[f"{site}.{layer}"][stored][t], 1e-5)


@torch.no_grad()
def test_state_steered_generation_equals_a_greedy_loop_over_the_edited_cache(tap):
    """CAA state steering (vectors from ``mean_difference``, the ``state`` mode of
    ``generate_steered``) == the paper's procedure on the model's own code: prefill all but the
    last prompt token, add ``m`` times each state vector of the layer to its cache entries, feed
    the last token and decode greedily."""
    model = tap.model
    positive, negative = Prompts(ids(4, 6).tolist()), Prompts(ids(4, 6).tolist())
    vectors = mean_difference(tap, positive, negative, batch_size=4, progress=False)
    assert {key for key in vectors.vectors if key[0] != "residual"} == {
        (site, layer) for site in tap.adapter.state_sites for layer in tap.state_layers
    }
    layer, m, new = tap.state_layers[-1], 50.0, 3
    prompt = ids(2, 7)
    steered = generate_steered(
        tap,
        Prompts(prompt.tolist()),
        vectors,
        layers=layer,
        multiplier=m,
        mode="state",
        max_new_tokens=new,
        **SCORED,
    )
    cache = own_cache(model, prompt[:, :-1])
    for site, value in vectors.state(layer).items():
        model_state(cache, site, layer).add_(m * value)
    fed, scores = prompt[:, -1:], []
    for _ in range(new):
        scores.append(step_by_step(model, cache, fed)[:, -1])
        fed = scores[-1].argmax(-1, keepdim=True)
    for mine, theirs in zip(steered.output.scores, scores):
        close(theirs, mine, 1e-5)
    assert torch.equal(steered.sequences[:, prompt.shape[1] :], torch.stack(scores, 1).argmax(-1))
    plain = model(prompt).logits[:, -1]
    assert rel_error(plain, scores[0]) > 1e-4


@torch.no_grad()
def test_the_logit_lens_at_the_last_layer_reads_the_models_logits(tap):
    """The lens unembeds through the model's own final norm and output head (Falcon-H1: times
    ``lm_head_multiplier``), so at the last layer it reads the model's logits."""
    tokens = ids()
    lens = LogitLens(tap.model)
    hidden, logits = lens.residuals(tokens)
    close(tap.model(tokens).logits, lens(hidden[-1], -1), 1e-5)
    close(logits, lens(hidden[-1], -1), 1e-5)


@torch.no_grad()
def test_elk_features_are_the_models_own_residuals_and_states(tap):
    """Quirky-probe features at the prompt's last token: the residual stream after every block
    (``output_hidden_states``) and each state component flattened at the state layers (the
    model's own cache after the prompt), each column named by its model layer."""
    model = tap.model
    texts = ["1 + 1 = 2. Alice:", "2 + 2 = 5. Bob:", "3 + 4 = 7. Alice:"]
    examples = [
        QuirkyPrompt(text, ("0", "1"), "Alice", bool(i % 2), bool(i % 2), False, 0.0)
        for i, text in enumerate(texts)
    ]
    found = quirky_features(tap, BYTES, examples, progress=False)
    assert found.layers["residual"] == list(range(tap.adapter.n_layers))
    for site in tap.adapter.state_sites:
        assert found.layers[site] == list(tap.state_layers)
    for n, example in enumerate(examples):
        tokens = torch.tensor([BYTES(example.text, add_special_tokens=False)["input_ids"]])
        out = model(tokens, output_hidden_states=True, use_cache=True)
        for index, entry in enumerate(tap.adapter.hidden_states_layout):
            if isinstance(entry, int):
                close(out.hidden_states[index][0, -1], found.prompt["residual"][n, entry], 1e-5)
        for site in tap.adapter.state_sites:
            for column, layer in enumerate(tap.state_layers):
                own = model_state(out.cache, site, layer)[0].flatten().float()
                close(own, found.prompt[site][n, column], 1e-5)


#: what a test module's ``from _hybrid_checks import *`` takes: every test above
__all__ = sorted(name for name in list(globals()) if name.startswith("test_"))
