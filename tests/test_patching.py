"""Activation patching, causal tracing and state transplants against naive loops.

Every entry of a batched sweep is compared with a separate un-batched run of the model's own
code: a state patch is the corrupted prefix run with ``use_cache``, the clean prefix's state
written into that cache, and the rest fed after it (transformers' paths; Mamba one token at a
time); a residual or mixer patch is the plain corrupted forward with a forward hook that puts
the clean activation (caught by the same hook on the clean forward) at the token.  Mamba,
Mamba-2, transformers' RWKV-4 and statetap's RWKV-7, random weights, fresh random prompts.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from rwkv_blinkdl_cases import random_checkpoint
from test_model_tap import _build, _continue_from
from transformers import RwkvForCausalLM

import statetap
from statetap.interp.patching import (
    STATE,
    activation_patching,
    answer_probability,
    causal_trace,
    logit_difference,
)
from statetap.interp.patching.tracing import embedding_noise, subject_mask
from statetap.interp.patching.transplant import transplant_state
from statetap.kernels.examples import rel_error
from statetap.models import from_blinkdl_state_dict

PAIRS, LENGTH = 2, 7
#: entries per site the naive loop checks, besides the first and the last
SAMPLED = 6
MODELS = ("mamba", "mamba2", "rwkv", "rwkv7")


@pytest.fixture(scope="module", params=MODELS)
def tap(request):
    if request.param == "rwkv7":
        model = from_blinkdl_state_dict(random_checkpoint("x070", 4321))
    else:
        model = _build(request.param)
    return statetap.attach(model)


def _prompts(tap, pairs=PAIRS, length=LENGTH):
    """Clean prompts and corrupted ones differing at two random positions (not the last)."""
    vocab = tap.model.config.vocab_size
    clean = torch.randint(1, vocab, (pairs, length))
    corrupt = clean.clone()
    for row in range(pairs):
        changed = torch.randperm(length - 1)[:2]
        corrupt[row, changed] = (clean[row, changed] + torch.randint(1, vocab - 1, (2,))) % vocab
    return clean, corrupt


def _answers(tap, pairs=PAIRS):
    vocab = tap.model.config.vocab_size
    answer = torch.randint(0, vocab, (pairs,))
    return answer, (answer + torch.randint(1, vocab, (pairs,))) % vocab


# ------------------------------------------------------------------ naive references
@contextlib.contextmanager
def _noised(tap, offset):
    """Within the block, each forward's input embeddings get the next tokens' rows of
    ``offset`` ``[1, L, d]`` added, in the order the tokens are fed (nothing with None)."""
    if offset is None:
        yield
        return
    fed = [0]

    def add(module, args, output):
        n = output.shape[1]
        output = output + offset[:, fed[0] : fed[0] + n]
        fed[0] += n
        return output

    handle = tap.model.get_input_embeddings().register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


def _naive_state_patch(tap, clean, corrupt, components, layer, t, offset=None):
    """Last-token logits ``[V]``: corrupted prefix to ``t``, the clean state of ``components``
    at ``layer`` written into its cache, the rest fed after it."""
    length = corrupt.shape[1]
    clean_cache = tap.adapter.output_cache(tap.model(clean[:, : t + 1], use_cache=True))
    with _noised(tap, offset):
        prefix = tap.model(corrupt[:, : t + 1], use_cache=True)
        if t == length - 1:
            return prefix.logits[0, -1]
        cache = tap.adapter.output_cache(prefix)
        for component in components:
            state = tap.adapter.cached_state(clean_cache, component, layer)
            tap.adapter.write_state(cache, component, layer, state)
        return _continue_from(tap.model, tap, cache, corrupt, t + 1)[0, -1]


def _naive_activation_patch(tap, clean, corrupt, site, layer, t, offset=None):
    """Last-token logits ``[V]`` of the corrupted forward with ``site`` of ``layer`` at token
    ``t`` replaced by the clean forward's, by a forward hook on the model's own module."""
    caught = {}

    def swap(tensor, key):
        if key == "clean":
            caught["value"] = tensor[:, t].clone()
            return tensor
        tensor = tensor.clone()
        tensor[:, t] = caught["value"]
        return tensor

    logits = {}
    for key, ids in (("clean", clean), ("corrupt", corrupt)):
        if site == "residual":
            handle = tap.adapter.following(layer).register_forward_pre_hook(
                lambda module, args, key=key: (swap(args[0], key), *args[1:])
            )
        else:
            handle = tap.adapter.mixer(layer).register_forward_hook(
                lambda module, args, out, key=key: tap.adapter.with_mixer_output(
                    out, swap(tap.adapter.mixer_output(out), key)
                )
            )
        try:
            with _noised(tap, offset if key == "corrupt" else None):
                logits[key] = tap.model(ids).logits[0, -1]
        finally:
            handle.remove()
    return logits["corrupt"]


def _naive(tap, clean, corrupt, site, layer, t, offset=None):
    if site in ("residual", "mixer"):
        return _naive_activation_patch(tap, clean, corrupt, site, layer, t, offset)
    components = tap.adapter.state_sites if site == STATE else [site]
    return _naive_state_patch(tap, clean, corrupt, components, layer, t, offset)


# ------------------------------------------------------------------ activation patching
@torch.no_grad()
def test_every_patch_equals_an_unbatched_run_with_the_cache_edited_by_hand(tap):
    clean, corrupt = _prompts(tap)
    answer, wrong = _answers(tap)
    sites = ["residual", "mixer", *tap.adapter.state_sites, STATE]
    # a small budget: several passes per site, rows of different lengths in each
    result = activation_patching(
        tap, clean, corrupt, (answer, wrong), sites=sites, batch_tokens=3 * LENGTH
    )
    metric = logit_difference(answer, wrong)
    n_layers = tap.adapter.n_layers
    for site in sites:
        assert result.layers[site] == list(range(n_layers))
        # the naive loop at a fresh random sample of the entries (it costs a forward each),
        # always the first and the last token of some layer among them
        entries = [(0, 0, 0), (PAIRS - 1, n_layers - 1, LENGTH - 1)] + [
            (int(p), int(layer), int(t))
            for p, layer, t in zip(
                torch.randint(PAIRS, (SAMPLED,)),
                torch.randint(n_layers, (SAMPLED,)),
                torch.randint(LENGTH, (SAMPLED,)),
            )
        ]
        expected = torch.stack(
            [
                metric(
                    _naive(tap, clean[p : p + 1], corrupt[p : p + 1], site, layer, t)[None],
                    torch.tensor([p]),
                )[0]
                for p, layer, t in entries
            ]
        )
        pairs, layers, times = (torch.tensor(index) for index in zip(*entries))
        assert rel_error(expected, result.patched[site][pairs, layers, times]) <= 1e-5, site
        # the fraction of the gap, to the rounding of the metrics it is made of
        gap = result.clean[pairs] - result.corrupt[pairs]
        fraction = (expected - result.corrupt[pairs]) / gap
        rounding = 1e-5 * float(expected.abs().max() / gap.abs().min())
        assert float((fraction - result.effect[site][pairs, layers, times]).abs().max()) <= rounding
    plain_clean = tap.model(clean).logits[:, -1]
    plain_corrupt = tap.model(corrupt).logits[:, -1]
    pairs = torch.arange(PAIRS)
    assert rel_error(metric(plain_clean, pairs), result.clean) <= 1e-5
    assert rel_error(metric(plain_corrupt, pairs), result.corrupt) <= 1e-5


@torch.no_grad()
def test_patching_the_clean_run_into_itself_changes_nothing(tap):
    clean, _ = _prompts(tap, pairs=3, length=5)
    answer, wrong = _answers(tap, 3)
    result = activation_patching(tap, clean, clean, (answer, wrong))
    for site in result.sites:
        expected = result.clean.view(-1, 1, 1).expand_as(result.patched[site])
        assert rel_error(expected, result.patched[site]) <= 1e-5
        assert bool(result.effect[site].isnan().all())  # no gap to recover


@torch.no_grad()
def test_the_last_residual_at_the_last_token_recovers_everything_and_earlier_tokens_nothing(tap):
    """The final residual at the last token is the whole clean answer (fraction 1); a patch
    before the first token that differs puts back what was there (fraction 0)."""
    clean = torch.randint(1, tap.model.config.vocab_size, (1, 9))
    corrupt = clean.clone()
    corrupt[0, 4] = (clean[0, 4] + 1) % tap.model.config.vocab_size
    answer, wrong = _answers(tap, 1)
    result = activation_patching(tap, clean, corrupt, (answer, wrong))
    last = tap.adapter.n_layers - 1
    assert abs(float(result.effect["residual"][0, last, -1]) - 1.0) <= 1e-4
    for site in result.sites:
        assert float(result.effect[site][0, :, :4].abs().max()) <= 1e-4, site


def test_a_callable_metric_and_chosen_layers_and_positions(tap):
    clean, corrupt = _prompts(tap)
    answer = torch.randint(0, tap.model.config.vocab_size, (PAIRS,))
    site = tap.adapter.state_sites[0]
    chosen = activation_patching(
        tap,
        clean,
        corrupt,
        answer_probability(answer),
        sites=[site],
        layers=[-1],
        positions=[1, -2],
    )
    everything = activation_patching(tap, clean, corrupt, answer_probability(answer), sites=[site])
    last = tap.adapter.n_layers - 1
    assert chosen.layers[site] == [last] and chosen.positions == [1, LENGTH - 2]
    expected = everything.patched[site][:, last:, [1, LENGTH - 2]]
    assert rel_error(expected, chosen.patched[site]) <= 1e-5
    # passes of one continuation length (models without attention masks): the same numbers;
    # transformers' RWKV-4 then refuses its one-token passes of several rows
    unpadded = dict(sites=[site], same_length=True)
    if isinstance(tap.model, RwkvForCausalLM):
        with pytest.raises(ValueError, match="one-token steps from a state wrong when B > 1"):
            activation_patching(tap, clean, corrupt, answer_probability(answer), **unpadded)
        return
    alike = activation_patching(tap, clean, corrupt, answer_probability(answer), **unpadded)
    assert rel_error(everything.patched[site], alike.patched[site]) <= 1e-5


def test_bad_input_names_the_argument(tap):
    clean, corrupt = _prompts(tap)
    metric = _answers(tap)
    with pytest.raises(ValueError, match=r"aligned token by token .*\[2, 7\] and \[2, 6\]"):
        activation_patching(tap, clean, corrupt[:, :-1], metric)
    with pytest.raises(ValueError, match="has no site 'bogus'"):
        activation_patching(tap, clean, corrupt, metric, sites=["bogus"])
    with pytest.raises(ValueError, match="layers .* out of range"):
        activation_patching(tap, clean, corrupt, metric, layers=[99])
    with pytest.raises(ValueError, match=r"positions must be a non-empty list in -7 \.\. 6"):
        activation_patching(tap, clean, corrupt, metric, positions=[7])
    with pytest.raises(ValueError, match="batch_tokens must be a positive int"):
        activation_patching(tap, clean, corrupt, metric, batch_tokens=0)
    with pytest.raises(ValueError, match="answer and wrong must have one token per prompt"):
        activation_patching(tap, clean, corrupt, (metric[0], metric[1][:1]))
    with pytest.raises(TypeError, match="metric must be"):
        activation_patching(tap, clean, corrupt, "logit difference")


# ------------------------------------------------------------------ causal tracing
@torch.no_grad()
def test_causal_trace_equals_restoring_each_site_by_hand(tap, fresh_seed):
    prompts = torch.randint(1, tap.model.config.vocab_size, (1, 6))
    answer = torch.randint(0, tap.model.config.vocab_size, (1,))
    samples, subject = 2, [1, 2]
    result = causal_trace(
        tap, prompts, subject, answer, samples=samples, seed=fresh_seed, batch_tokens=10
    )
    noise = embedding_noise(tap, subject_mask(subject, 1, 6), samples, 3.0, fresh_seed)
    embeddings = tap.model.get_input_embeddings().weight
    assert noise[:, [0, 3, 4, 5]].abs().max() == 0
    assert abs(float(noise[:, 1:3].std()) / (3 * float(embeddings.std())) - 1) < 0.5
    probability = answer_probability(answer)
    pair = torch.tensor([0])
    corrupted = []
    for sample in range(samples):
        with _noised(tap, noise[sample : sample + 1]):
            corrupted.append(probability(tap.model(prompts).logits[:, -1], pair))
    corrupt = torch.stack(corrupted).mean()
    assert rel_error(corrupt, result.corrupt[0]) <= 1e-5
    for site in result.sites:
        layers = result.layers[site]
        # the naive loop at a fresh random sample of (layer, position), first and last included
        entries = [(layers[0], result.positions[0]), (layers[-1], result.positions[-1])] + [
            (layers[int(i)], result.positions[int(j)])
            for i, j in zip(
                torch.randint(len(layers), (SAMPLED,)),
                torch.randint(len(result.positions), (SAMPLED,)),
            )
        ]
        for layer, t in entries:
            restored = torch.stack(
                [
                    probability(
                        _naive(tap, prompts, prompts, site, layer, t, noise[s : s + 1])[None],
                        pair,
                    )
                    for s in range(samples)
                ]
            ).mean()
            assert abs(float(restored - corrupt) - float(result.effect[site][0, layer, t])) <= 1e-5


def test_causal_trace_is_seeded_and_checks_its_input(tap):
    prompts = torch.randint(1, tap.model.config.vocab_size, (2, 5))
    answer = torch.randint(0, tap.model.config.vocab_size, (2,))
    subject = torch.zeros(2, 5, dtype=torch.bool)
    subject[0, 1], subject[1, 2:4] = True, True
    first = causal_trace(
        tap, prompts, subject, answer, samples=2, seed=3, sites=["residual"], layers=[0]
    )
    again = causal_trace(
        tap, prompts, subject, answer, samples=2, seed=3, sites=["residual"], layers=[0]
    )
    assert torch.equal(first.effect["residual"], again.effect["residual"])
    with pytest.raises(ValueError, match="subject must name at least one token of every prompt"):
        causal_trace(tap, prompts, torch.zeros(2, 5, dtype=torch.bool), answer)
    with pytest.raises(ValueError, match="samples must be a positive int"):
        causal_trace(tap, prompts, [1], answer, samples=0)
    with pytest.raises(ValueError, match="noise must be a positive finite number"):
        causal_trace(tap, prompts, [1], answer, noise=-1.0)
    with pytest.raises(ValueError, match=r"answer must be a \[N=2\] tensor"):
        causal_trace(tap, prompts, [1], answer[:1])


# ------------------------------------------------------------------ state transplant
@torch.no_grad()
@pytest.mark.parametrize("mode", ["set", "add"])
def test_transplant_equals_writing_the_source_cache_into_the_target_cache(tap, mode):
    vocab = tap.model.config.vocab_size
    source = torch.randint(1, vocab, (1, 8))
    target = torch.randint(1, vocab, (1, 6))
    before, layers = 3, [0, tap.adapter.n_layers - 1]
    result = transplant_state(
        tap,
        source,
        target,
        before=before,
        layers=layers,
        mode=mode,
        scale=None if mode == "set" else 0.5,
    )
    source_cache = tap.adapter.output_cache(tap.model(source, use_cache=True))
    prefix = tap.model(target[:, :before], use_cache=True)
    cache = tap.adapter.output_cache(prefix)
    for site in tap.adapter.state_sites:
        for layer in layers:
            moved = tap.adapter.cached_state(source_cache, site, layer)
            if mode == "add":
                moved = tap.adapter.cached_state(cache, site, layer) + 0.5 * moved
            tap.adapter.write_state(cache, site, layer, moved)
    rest = _continue_from(tap.model, tap, cache, target, before)
    assert rel_error(prefix.logits, result.logits[:, :before]) <= 1e-5
    assert rel_error(rest, result.logits[:, before:]) <= 1e-5
    assert rel_error(tap.model(target).logits[:, before:], result.logits[:, before:]) > 1e-4


@torch.no_grad()
def test_transplant_then_generate_continues_from_the_moved_state(tap):
    vocab = tap.model.config.vocab_size
    source, target = torch.randint(1, vocab, (1, 7)), torch.randint(1, vocab, (1, 5))
    options = dict(
        max_new_tokens=2,
        do_sample=False,
        eos_token_id=[],
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    generated = transplant_state(
        tap, source, target, target_mask=torch.ones_like(target), generate=options
    )
    # by hand: the target's cache with the source's state, then the first generated token
    source_cache = tap.adapter.output_cache(tap.model(source, use_cache=True))
    prompt = tap.model(target, use_cache=True)
    cache = tap.adapter.output_cache(prompt)
    for site in tap.adapter.state_sites:
        for layer in range(tap.adapter.n_layers):
            tap.adapter.write_state(
                cache, site, layer, tap.adapter.cached_state(source_cache, site, layer)
            )
    first = generated.sequences[:, -2:-1]
    assert torch.equal(first[0], prompt.logits[0, -1:].argmax(-1))
    step = tap.model(first, **tap.adapter.cache_kwargs(cache)).logits[:, -1]
    assert rel_error(step, generated.output.scores[1]) <= 1e-5


def test_transplant_bad_input(tap):
    ids = torch.randint(1, tap.model.config.vocab_size, (2, 5))
    with pytest.raises(ValueError, match=r"before must be an int in 1 \.\. 5"):
        transplant_state(tap, ids, ids, before=0)
    with pytest.raises(ValueError, match="source must have 1 row or one per target row"):
        transplant_state(tap, ids.repeat(2, 1), ids)
    with pytest.raises(ValueError, match="sites must be state components"):
        transplant_state(tap, ids, ids, sites=["residual"])


# ------------------------------------------------------------------ pairs and tasks
def test_quirky_tasks_make_aligned_pairs_whose_answers_follow_the_rules():
    from statetap.interp.patching.tasks import quirky_task_rows, tokenize_pairs
    from statetap.zoo.quirky import ANSWERS, quirky_addition, sloppy_sum
    from statetap.zoo.tokenizer import quirky_tokenizer

    _, test = quirky_addition(50, 200, max_digits=3, seed=int(torch.randint(0, 10**6, ())))
    tokenizer = quirky_tokenizer()
    rows, patterns = quirky_task_rows("operand", test)
    for row in rows:
        a, rest = row["corrupt"].split(" + ")
        b, rest = rest.split(" = ")
        shown = int(rest.split(".")[0])
        assert shown not in (int(a) + int(b), sloppy_sum(int(a) + int(b)))  # both say False
        assert row["clean"].split(" + ")[1] == row["corrupt"].split(" + ")[1]
    assert all((row["answer"], row["wrong"]) == (ANSWERS[True], ANSWERS[False]) for row in rows)
    truthful = {e.text: e.label for e in test}
    assert all(truthful[row["clean"]] for row in rows)
    pairs = tokenize_pairs(rows, tokenizer, limit=5, groups=patterns)
    assert pairs.clean.shape == pairs.corrupt.shape and pairs.kept <= 5
    assert bool((pairs.subject.sum(1) == 1).all())  # one operand digit differs
    rows, _ = quirky_task_rows("character", test)
    by_text = {e.text: e for e in test}
    for row in rows:
        example = by_text[row["clean"]]
        assert example.character == "Bob" and by_text[row["corrupt"]].character == "Alice"
        assert row["answer"] == ANSWERS[example.bob_label] != row["wrong"]


def test_pair_files_are_checked_line_by_line(tmp_path):
    from statetap.interp.patching.pair_file import read_pair_rows
    from statetap.interp.patching.tasks import tokenize_pairs
    from statetap.zoo.tokenizer import quirky_tokenizer

    path = tmp_path / "pairs.jsonl"
    good = (
        '{"clean": "1 + 2 = 3. Bob:", "corrupt": "1 + 5 = 3. Bob:", '
        '"answer": " True", "wrong": " False"}'
    )
    path.write_text(good + "\n\n" + '{"clean": "1", "corrupt": "2", "answer": " True"}\n')
    with pytest.raises(ValueError, match=r"line 3 lacks \['wrong'\]"):
        read_pair_rows(path)
    path.write_text(good + "\n[1]\n")
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        read_pair_rows(path)
    path.write_text(good.replace('"1 + 5', '"1 + 55') + "\n")
    with pytest.raises(ValueError, match="pair 0: clean and corrupt prompts must have the same"):
        tokenize_pairs(read_pair_rows(path), quirky_tokenizer())
    path.write_text(good.replace('" True"', '" True True"') + "\n")
    with pytest.raises(ValueError, match="pair 0: answer ' True True' is 2 tokens, not one"):
        tokenize_pairs(read_pair_rows(path), quirky_tokenizer())
    path.write_text(good + "\n" + good.replace('"1 + ', '"11 + ') + "\n" + good + "\n")
    pairs = tokenize_pairs(read_pair_rows(path), quirky_tokenizer())
    assert (pairs.kept, pairs.total) == (2, 3) and pairs.clean.shape == (2, 8)


def test_result_round_trips_through_its_json_file(tap, tmp_path):
    from statetap.interp.patching import load_result

    clean, corrupt = _prompts(tap, pairs=1, length=4)
    result = activation_patching(tap, clean, clean, _answers(tap, 1), sites=["residual"])
    result.tokens = [["a", "b", "c", "d"]]
    loaded = load_result(result.save(tmp_path).parent)
    assert loaded.sites == result.sites and loaded.tokens == result.tokens
    assert torch.equal(loaded.patched["residual"], result.patched["residual"])
    assert bool(loaded.effect["residual"].isnan().all())  # NaN survives JSON as null


# ------------------------------------------------------------------ command line
def test_patch_command_writes_the_sweep_of_the_library_and_a_heatmap_per_site(
    tmp_path, monkeypatch, capsys
):
    from statetap import zoo
    from statetap.cli import main
    from statetap.interp.patching import load_result
    from statetap.interp.patching.tasks import quirky_task_rows, tokenize_pairs

    monkeypatch.setenv("STATETAP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "operand"
    argv = ["patch", "--task", "operand", "--model", "quirky-mamba-short", "--limit", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = load_result(out)
    recipe = zoo.resolve("quirky-mamba-short")
    model, tokenizer = zoo.load(recipe)
    rows, patterns = quirky_task_rows("operand", zoo.quirky_split(recipe)[1])
    pairs = tokenize_pairs(rows, tokenizer, 3, groups=patterns)
    direct = activation_patching(
        statetap.attach(model.eval()), pairs.clean, pairs.corrupt, (pairs.answer, pairs.wrong)
    )
    assert result.sites == ["residual", "mixer", "ssm", "conv"] and result.tokens == pairs.tokens
    for site in result.sites:
        assert rel_error(direct.patched[site], result.patched[site]) <= 1e-6
        png = out / f"activation-patching-{site}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"\n{site} " in printed
    assert f"{pairs.kept} of {pairs.total} pairs" in printed

    # causal tracing from a pair file: the tokens that differ are the subject
    pair_file = tmp_path / "pairs.jsonl"
    pair_file.write_text(
        '{"clean": "12 + 3 = 15. Alice:", "corrupt": "12 + 4 = 15. Alice:", '
        '"answer": " True", "wrong": " False"}\n'
    )
    traced = tmp_path / "traced"
    argv = ["patch", "--pairs", str(pair_file), "--model", "quirky-mamba-short", "--method"]
    assert main([*argv, "trace", "--samples", "2", "--out", str(traced)]) == 0
    result = load_result(traced)
    assert result.method == "causal tracing" and result.sites == ["residual", "state"]
    assert result.meta["subject"] == [[i == 3 for i in range(10)]]
    assert (traced / "causal-tracing-state.png").stat().st_size > 0


# ------------------------------------------------------------------ hybrids
@torch.no_grad()
def test_a_hybrid_sweep_equals_one_injection_per_patch():
    """Bamba (Mamba-2 layers 0 and 2 beside attention layer 1): the continuations start from
    re-run prefixes (attention keys and values cannot be rebuilt from the state). Each state
    entry equals one un-batched pass setting the clean state by an ``Inject`` (the hybrid
    tests check that against the model's own cache, edited: transformers' own one-token steps
    drift from its forward by ~5e-4 here, as large as these effects), each residual entry the
    forward hook."""
    from transformers import BambaConfig, BambaForCausalLM

    config = BambaConfig(
        vocab_size=53,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        mamba_n_heads=8,
        mamba_d_head=8,
        mamba_n_groups=2,
        mamba_d_state=8,
        mamba_chunk_size=4,
        num_hidden_layers=3,
        intermediate_size=48,
        attn_layer_indices=[1],
    )
    tap = statetap.attach(BambaForCausalLM(config).eval())
    clean, corrupt = _prompts(tap, pairs=2, length=6)
    answer, wrong = _answers(tap)
    sites = ["residual", "ssm", "conv", STATE]
    result = activation_patching(tap, clean, corrupt, (answer, wrong), sites=sites)
    metric = logit_difference(answer, wrong)
    assert result.layers["ssm"] == [0, 2] and result.layers["residual"] == [0, 1, 2]
    states = tap.run(clean, emit=[statetap.Emit(STATE, [0, 2], positions=list(range(6)))])
    for site in sites:
        expected = torch.empty_like(result.patched[site])
        for pair in range(2):
            one = torch.tensor([pair])
            for i, layer in enumerate(result.layers[site]):
                for t in range(6):
                    if site == "residual":
                        logits = _naive_activation_patch(
                            tap, clean[one], corrupt[one], site, layer, t
                        )
                    else:
                        inject = [
                            statetap.Inject(
                                component,
                                layer,
                                states[component, layer][one, t : t + 1],
                                positions=t,
                                mode="set",
                            )
                            for component in (("ssm", "conv") if site == STATE else (site,))
                        ]
                        logits = tap.run(corrupt[one], inject=inject).logits[0, -1]
                    expected[pair, i, t] = metric(logits[None], one)
        assert rel_error(expected, result.patched[site]) <= 1e-5, site
    # and the patches change the metric by more than that tolerance
    assert rel_error(result.corrupt.view(-1, 1, 1).expand_as(expected), expected) > 1e-4
    # causal tracing: the re-run prefixes carry their share of the noise
    prompts, subject = clean[:1], [1, 2]
    traced = causal_trace(tap, prompts, subject, answer[:1], samples=2, seed=5, sites=[STATE])
    noise = embedding_noise(tap, subject_mask(subject, 1, 6), 2, 3.0, 5)
    probability = answer_probability(answer[:1])
    for i, layer in enumerate(traced.layers[STATE]):
        for t in range(6):
            inject = [
                statetap.Inject(c, layer, states[c, layer][:1, t : t + 1], positions=t, mode="set")
                for c in ("ssm", "conv")
            ]
            restored = []
            for sample in range(2):
                with _noised(tap, noise[sample : sample + 1]):
                    logits = tap.run(prompts, inject=inject).logits[:, -1]
                restored.append(probability(logits, torch.tensor([0])))
            effect = torch.stack(restored).mean() - traced.corrupt[0]
            assert abs(float(effect) - float(traced.effect[STATE][0, i, t])) <= 1e-6
