"""``statetap.attach`` on statetap's RWKV-5/6/7: padding, resume, fork, generate, steering and
the attach-time probe.  Each behaviour is checked against the model run by hand (its own
cache edited between two tokens, rows run alone, greedy loops); the official package's
numbers are in ``test_rwkv_official.py``."""

from __future__ import annotations

import pytest
import torch
from rwkv_blinkdl_cases import SIZES, random_checkpoint
from rwkv_blinkdl_cases import assert_close as close
from torch import nn

import statetap
from statetap.adapters.upstream import UpstreamDrift
from statetap.extract import ExtractConfig, extract, load_extraction
from statetap.interp.lens import LogitLens
from statetap.interp.provenance import model_identity
from statetap.interp.steering import ContrastPairs, Prompts, SteeringVectors, sweep
from statetap.models import RwkvWorldTokenizer, from_blinkdl_state_dict

VERSIONS = ("x052", "x060", "x070")
STATE_SITES = ("wkv", "att_shift", "ffn_shift")


@pytest.fixture(scope="module", params=VERSIONS)
def version(request):
    return request.param


@pytest.fixture
def tap(version, fresh_seed):
    return statetap.attach(from_blinkdl_state_dict(random_checkpoint(version, fresh_seed)))


def random_value(tap, site):
    return torch.randn(tap.site_shape(site))


def tokens(version, *shape):
    return torch.randint(1, SIZES[version]["vocab"], shape)


def test_padded_rows_emit_and_inject_as_alone(tap, version):
    """Left-padded rows of different lengths: emissions at text positions and an injection at
    each row's third-last token equal the row run alone."""
    texts = [tokens(version, n) for n in (7, 3, 5)]
    length = 7
    ids = torch.zeros(3, length, dtype=torch.long)
    mask = torch.zeros(3, length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids[row, length - len(text) :], mask[row, length - len(text) :] = text, 1
    emit = [statetap.Emit("state", "all", positions=[0, -1]), statetap.Emit("residual", 1, [1])]
    inject = [statetap.Inject("wkv", 0, random_value(tap, "wkv"), positions=-3, scale=0.7)]
    batched = tap.run(ids, mask, emit=emit, inject=inject, keep_state=True)
    for row, text in enumerate(texts):
        alone = tap.run(text[None], emit=emit, inject=inject, keep_state=True)
        close(batched.logits[row, length - len(text) :], alone.logits[0])
        for key, value in alone.activations.items():
            close(batched[key][row], value[0])
        for site in STATE_SITES:
            close(batched.state.get(site, 1)[row], alone.state.get(site, 1)[0])


def test_resume_and_fork_equal_one_pass(tap, version):
    """A pass resumed from a kept state equals the whole text in one pass; a fork edited with
    a multiplier per branch equals one injection per multiplier at the prefix's last token."""
    prefix, rest = tokens(version, 2, 5), tokens(version, 2, 4)
    whole = tap.run(torch.cat([prefix, rest], 1), emit=[statetap.Emit("state", 1, [-1])])
    state = tap.run(prefix, keep_state=True).state
    resumed = tap.run(rest, state=state, emit=[statetap.Emit("state", 1, [-1])])
    close(resumed.logits, whole.logits[:, 5:])
    for site in STATE_SITES:
        close(resumed[site, 1], whole[site, 1])
    scales = torch.tensor([0.0, 1.0, -2.0])
    for site in STATE_SITES:
        value = random_value(tap, site)
        branches = state.fork(3)
        branches.edit(site, 1, value, scale=scales.repeat(2))
        forked = tap.run(rest.repeat_interleave(3, 0), state=branches)
        for i, scale in enumerate(scales.tolist()):
            injected = tap.run(
                torch.cat([prefix, rest], 1),
                inject=[statetap.Inject(site, 1, value, positions=4, scale=scale)],
            )
            close(forked.logits[i::3], injected.logits[:, 5:])


def test_generation_equals_rows_alone_and_a_greedy_loop(tap, version):
    """Left-padded batched greedy generation with a wkv injection after every fed-back token
    equals each row's own loop: feed a token, add the value to the model's cache, repeat
    (id 0, the end of text, is barred until ``min_new_tokens``, as ``generate`` bars it)."""

    def greedy(logits):
        return int(logits[0, -1, 1:].argmax()) + 1

    model, layer, new = tap.model, 1, 4
    value = random_value(tap, "wkv")
    prompts = [tokens(version, n) for n in (6, 3)]
    ids = torch.zeros(2, 6, dtype=torch.long)
    mask = torch.zeros(2, 6, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, 6 - len(prompt) :], mask[row, 6 - len(prompt) :] = prompt, 1
    out = tap.generate(
        ids,
        mask,
        inject=[statetap.Inject("wkv", layer, value, positions="new", scale=0.5)],
        emit=[statetap.Emit("ffn_shift", 0, positions="new")],
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
    )
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            step = model(prompt[None], use_cache=True)
            cache, generated, shifts = step.cache, [greedy(step.logits)], []
            for _ in range(new - 1):
                step = model(torch.tensor([generated[-1:]]), cache=cache, use_cache=True)
                cache.wkv[layer] += 0.5 * value
                shifts.append(cache.ffn_shift[0][0].clone())
                generated.append(greedy(step.logits))
            assert out.sequences[row, 6:].tolist() == generated
            close(out["ffn_shift", 0][row], torch.stack(shifts))


def test_state_steering_sweep_equals_editing_the_cache(version, fresh_seed):
    """interp's state-mode sweep == prefill all but the last token, add m * delta to every
    state component of layer l in the model's own cache, step the last token."""
    model = from_blinkdl_state_dict(random_checkpoint(version, fresh_seed))
    tap = statetap.attach(model)
    vocab = SIZES[version]["vocab"]
    prompts = Prompts([tokens(version, n).tolist() for n in (6, 4, 5)])
    pairs = ContrastPairs(prompts, torch.tensor([1, 2, 3]), torch.tensor([4, 5, vocab - 1]))
    vectors = SteeringVectors(
        {
            (site, layer): 0.5 * random_value(tap, site)
            for layer in range(tap.adapter.n_layers)
            for site in ("residual", *STATE_SITES)
        },
        meta={"identity": model_identity(model)},
    )
    multipliers, layer = [-1.5, 2.0], 1
    result = sweep(tap, pairs, vectors, multipliers, [layer], modes=["state"], progress=False)
    with torch.no_grad():
        for row, ids in enumerate(prompts.ids):
            for j, m in enumerate(multipliers):
                cache = model(torch.tensor([ids[:-1]]), use_cache=True).cache
                for site in STATE_SITES:
                    getattr(cache, site)[layer] += m * vectors[site, layer]
                logits = model(torch.tensor([ids[-1:]]), cache=cache).logits[0, -1].double()
                p = logits.softmax(-1)
                yes, no = p[int(pairs.matching[row])], p[int(pairs.not_matching[row])]
                assert abs(float(result.p_match[0, 0, j, row]) - float(yes / (yes + no))) < 1e-5


def test_attach_refuses_a_foreign_class_and_a_layer_that_skips_the_pass(version, fresh_seed):
    class Rwkv5ForCausalLM(nn.Module):  # a remote-code class of the same name
        pass

    with pytest.raises(TypeError, match="is not statetap's own model"):
        statetap.attach(Rwkv5ForCausalLM())
    model = from_blinkdl_state_dict(random_checkpoint(version, fresh_seed))
    model.instrumented = lambda instrumentation: torch.no_grad()  # the pass never reaches a layer
    with pytest.raises(UpstreamDrift, match="statetap.models.wkv was not called during a prefill"):
        statetap.attach(model)


def test_logit_lens_reads_the_blocks_outputs(version, fresh_seed):
    """The residual site after block l is the model's own hidden state after block l
    (``output_hidden_states``), and the logit lens at the last layer gives the model's
    logits exactly (the final norm and head are the adapter's)."""
    model = from_blinkdl_state_dict(random_checkpoint(version, fresh_seed))
    lens = LogitLens(model)
    ids = tokens(version, 2, 6)
    hidden, logits = lens.residuals(ids)
    with torch.no_grad():
        own = model(ids, output_hidden_states=True).hidden_states
    for layer in range(lens.n_layers):
        index = lens.tap.adapter.hidden_states_index(layer)
        torch.testing.assert_close(hidden[layer], own[index], rtol=0, atol=0)
    assert torch.equal(lens(hidden[-1], layer=-1), logits)


def test_extraction_over_texts_of_different_lengths_equals_each_text_alone(
    version, fresh_seed, tmp_path
):
    """``statetap.extract`` with the World tokenizer (right-padded batches): every row's
    residual and states at its first and last token equal a pass over that text alone."""
    sizes = dict(SIZES[version], vocab=65536)
    model = from_blinkdl_state_dict(random_checkpoint(version, fresh_seed, sizes))
    tokenizer = RwkvWorldTokenizer()
    texts = ["The quick brown fox", "a", "state of the art, réseau"]
    config = ExtractConfig(out=tmp_path / "out", positions=(0, -1), batch_size=3)
    extract(model, tokenizer, texts, config, model_name="random")
    _, tensors = load_extraction(config.out)
    tap = statetap.attach(model)
    emit = [statetap.Emit(site, "all", [0, -1]) for site in ("residual", "state")]
    for row, text in enumerate(texts):
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        alone = tap.run(ids, emit=emit)
        for (site, layer), value in alone.activations.items():
            close(tensors[f"{site}.{layer}"][row], value[0].float())


def test_mixer_emission_and_injection_equal_a_forward_hook(tap, version):
    """The ``"mixer"`` site is the time mix's output: emitted as a hook sees it, and an
    injection at t equals a hook adding the value there."""
    ids, layer, t = tokens(version, 2, 6), 1, 3
    value = random_value(tap, "mixer")
    seen = []

    def add_at_t(module, args, output):
        seen.append(output[0].clone())
        edited = output[0].clone()
        edited[:, t] += 1.5 * value
        return (edited, *output[1:])

    handle = tap.adapter.mixer(layer).register_forward_hook(add_at_t)
    try:
        with torch.no_grad():
            hooked = tap.model(ids).logits
    finally:
        handle.remove()
    result = tap.run(
        ids,
        emit=[statetap.Emit("mixer", layer, positions="all")],
        inject=[statetap.Inject("mixer", layer, value, positions=t, scale=1.5)],
    )
    close(result.logits, hooked)
    edited = seen[0].clone()
    edited[:, t] += 1.5 * value
    close(result["mixer", layer], edited)
