"""``statetap.interp.steering`` against hand computations on the plain models.

Tiny transformers Mamba and RWKV-4 models (built from configs, fixed seeds; Mamba-2 and
statetap's RWKV-7 for generation, ``test_steering_generate.py``) with transformers' byte-level
tokenizer; datasets are random questions drawn afresh each run.  Every comparison
is with something computed without statetap: per-example forward passes with
``output_hidden_states`` and the model's own cache, forward hooks on the plain model, the
paper's "prefill, edit the cache, step the last token", softmax by hand.
"""

from __future__ import annotations

import json

import pytest
import torch
from rwkv_blinkdl_cases import SIZES, random_checkpoint
from test_model_tap import ARCHITECTURES as MODEL_TAP_ARCHITECTURES
from transformers import (
    ByT5Tokenizer,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    RwkvConfig,
    RwkvForCausalLM,
)

import statetap
from statetap.interp.provenance import model_identity
from statetap.interp.steering import (
    TEMPLATES,
    ContrastPairs,
    Prompts,
    PromptTemplate,
    SteeringVectors,
    ab_pairs,
    answer_probabilities,
    behaviour_range,
    generate_steered,
    load_ab_items,
    load_sweep,
    load_vectors,
    max_effect_over_layers,
    mean_difference,
    plot_layers,
    plot_modes,
    save_sweep,
    save_vectors,
    steering_mode,
    sweep,
)
from statetap.interp.steering.cli import add_steer_commands
from statetap.interp.steering.vectors import whiten_difference
from statetap.models import from_blinkdl_state_dict

TOKENIZER = ByT5Tokenizer(extra_ids=0)  # pad 0, eos 1, unk 2, byte x -> x + 3
VOCAB = len(TOKENIZER)
TEMPLATE = PromptTemplate("Q: {question}", " A: (")  # the instruction ends before " A: ("


def _build(name: str):
    """A tiny three-layer ``"mamba"``, ``"mamba2"``, ``"rwkv"`` (RWKV-4) or ``"rwkv7"``
    (statetap's) model over the tokenizer's vocabulary."""
    torch.manual_seed(4321)
    if name == "mamba":
        config = MambaConfig(
            vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=3, conv_kernel=4
        )
        return MambaForCausalLM(config).eval()
    if name == "mamba2":  # test_model_tap's three-layer Mamba-2
        config_class, model_class, arguments = MODEL_TAP_ARCHITECTURES["mamba2"]
        return model_class(config_class(vocab_size=VOCAB, **arguments)).eval()
    if name == "rwkv7":
        return from_blinkdl_state_dict(
            random_checkpoint("x070", 4321, SIZES["x070"] | {"vocab": VOCAB})
        )
    config = RwkvConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=3,
        attention_hidden_size=32,
        intermediate_size=64,
        rescale_every=2,
    )
    model = RwkvForCausalLM(config).eval()
    with torch.no_grad():  # give the decays and bonuses some spread
        for block in model.rwkv.blocks:
            block.attention.time_decay.normal_(0.0, 1.0)
            block.attention.time_first.normal_(0.0, 1.0)
    return model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and pytest -n 2 already fills both cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["mamba", "rwkv"])
def model(request):
    return _build(request.param)


@pytest.fixture(scope="module")
def mamba():
    return _build("mamba")


def _rows(n: int) -> list[dict]:
    """``n`` A/B rows with random questions of different lengths, random matching letters."""
    rows = []
    for _ in range(n):
        letters = "abcdefgh "
        size = int(torch.randint(3, 12, ()))
        question = "".join(letters[int(i)] for i in torch.randint(0, len(letters), (size,)))
        a_matches = bool(torch.rand(()) < 0.5)
        rows.append(
            {
                "question": f"{question}\n(A) yes\n(B) no",
                "answer_matching_behavior": "(A)" if a_matches else "(B)",
                "answer_not_matching_behavior": "(B)" if a_matches else "(A)",
            }
        )
    return rows


def _pairs(n: int) -> ContrastPairs:
    return ab_pairs(load_ab_items(_rows(n)), TOKENIZER, TEMPLATE)


def _random_vectors(tap, scale: float = 1.0) -> SteeringVectors:
    """Random vectors for every site and layer.  RWKV-4's denominator ``bb`` is left alone: a
    random edit can bring it near zero, where the output is ill-conditioned (a 1e-7 rounding
    difference becomes 1e-4)."""
    vectors = {}
    for layer in range(tap.adapter.n_layers):
        for site in ("residual", *tap.adapter.state_sites):
            vectors[site, layer] = scale * torch.randn(tap.site_shape(site))
            if site == "wkv" and isinstance(tap.model, RwkvForCausalLM):
                vectors[site, layer][1] = 0.0
    return SteeringVectors(vectors, dict(identity=model_identity(tap.model)))


def _hand_p(logits: torch.Tensor, yes: int, no: int) -> tuple[float, float]:
    p = logits.double().exp() / logits.double().exp().sum()
    return float(p[yes] / (p[yes] + p[no])), float(1 - p[yes] - p[no])


def _own_state(model, cache, layer: int) -> dict[str, torch.Tensor]:
    """Every state component of ``layer`` in the model's own cache (row 0), as views."""
    if isinstance(model, RwkvForCausalLM):
        return {
            "wkv": torch.stack([cache[i][0, :, layer] for i in (2, 3, 4)]),
            "att_shift": cache[1][0, :, layer],
            "ffn_shift": cache[0][0, :, layer],
        }
    return {
        "ssm": cache.layers[layer].recurrent_states[0][0],
        "conv": cache.layers[layer].conv_states[0][0],
    }


def _add_to_own_state(model, cache, layer: int, deltas: dict[str, torch.Tensor]) -> None:
    """Add ``deltas`` (component -> value) to row 0 of ``layer`` in the model's own cache:
    RWKV-4's list of ``[B, C, layers]`` tensors, the Mamba layers' state dicts, statetap RWKV's
    per-component lists."""
    if isinstance(model, RwkvForCausalLM):
        for index, part in zip((2, 3, 4), deltas["wkv"]):
            cache[index][0, :, layer] += part
        cache[1][0, :, layer] += deltas["att_shift"]
        cache[0][0, :, layer] += deltas["ffn_shift"]
    elif isinstance(model, (MambaForCausalLM, Mamba2ForCausalLM)):
        cache.layers[layer].recurrent_states[0][0] += deltas["ssm"]
        cache.layers[layer].conv_states[0][0] += deltas["conv"]
    else:
        for site, delta in deltas.items():
            getattr(cache, site)[layer][0] += delta


def _close(expected, actual, atol: float = 1e-5) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual), torch.as_tensor(expected), rtol=0, atol=atol
    )


# ---------------------------------------------------------------------------------- vectors
@torch.no_grad()
def test_vectors_equal_a_hand_computation(model):
    tap = statetap.attach(model)
    pairs = _pairs(7)
    positive, negative = pairs.completions()
    vectors = mean_difference(tap, positive, negative, batch_size=3, progress=False)
    hand: dict[tuple[str, int], list[torch.Tensor]] = {}
    for sign, prompts in ((1.0, positive), (-1.0, negative)):
        for ids in prompts.ids:
            out = model(torch.tensor([ids]), output_hidden_states=True, use_cache=True)
            cache = tap.adapter.output_cache(out)
            for layer in range(3):
                items = {"residual": out.hidden_states[layer][0, -1]}
                items |= _own_state(model, cache, layer)
                for site, value in items.items():
                    hand.setdefault((site, layer), []).append(sign * value / len(prompts.ids))
    assert sorted(vectors.vectors) == sorted(hand)
    for key, parts in hand.items():
        expected = torch.stack(parts).double().sum(0)
        assert vectors[key].dtype == torch.float32
        _close(expected.float(), vectors[key], atol=1e-5 * (1 + float(expected.abs().max())))
    # metadata ties the vectors to the model and the token ids
    assert vectors.meta["model_class"] == type(model).__name__
    assert vectors.meta["n_positive"] == vectors.meta["n_negative"] == 7
    other = mean_difference(tap, *_pairs(7).completions(), layers=[0], progress=False)
    assert other.meta["dataset"] != vectors.meta["dataset"]


@torch.no_grad()
def test_whitened_vectors_equal_pinv_of_the_covariance_times_the_difference(mamba):
    tap = statetap.attach(mamba)
    positive = Prompts([torch.randint(3, VOCAB, (int(torch.randint(2, 9, ())),)) for _ in range(9)])
    negative = Prompts([torch.randint(3, VOCAB, (int(torch.randint(2, 9, ())),)) for _ in range(8)])
    whitened = mean_difference(
        tap, positive, negative, layers=[1], state=False, whiten=True, batch_size=4, progress=False
    )
    acts = [
        mamba(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0, -1].double()
        for ids in positive.ids + negative.ids
    ]
    acts = torch.stack(acts)  # [17, 32]: fewer samples than dimensions, as in the paper
    difference = acts[:9].mean(0) - acts[9:].mean(0)
    centred = acts - acts.mean(0)
    covariance = centred.T @ centred / (len(acts) - 1)
    expected = torch.linalg.pinv(covariance, hermitian=True) @ difference
    _close(expected.float(), whitened["residual", 1], atol=1e-4 * float(expected.abs().max()))
    assert list(whitened.vectors) == [("residual", 1)] and whitened.meta["whitened"]
    kept = whitened.meta["whitening"]["kept"]
    assert kept == {1: int(torch.linalg.matrix_rank(covariance))} and kept[1] <= 16  # 17 samples


def _near_singular_activations(samples: int, width: int) -> torch.Tensor:
    """``[samples, width]`` float32 activations whose covariance has eigenvalues spread evenly
    in log scale from 1 down to 1e-9, along random directions: full rank, near-singular."""
    variances = torch.logspace(0, -9, width, dtype=torch.float64)
    directions, _ = torch.linalg.qr(torch.randn(width, width, dtype=torch.float64))
    acts = (torch.randn(samples, width, dtype=torch.float64) * variances.sqrt()) @ directions.T
    return acts.float()


def test_whitening_cut_off_paper_float32_and_float64():
    """The paper's variant is torch.linalg.pinv of the float32 covariance with pinv's default
    cut-off; the cut-off keeps the directions whose singular value is above rtol times the
    largest (float32's default eps * H drops the low-variance half, float64's keeps them all)."""
    width = 64
    acts = _near_singular_activations(400, width)
    difference = torch.randn(width, dtype=torch.float64)
    covariance = torch.cov(acts.double().T)
    paper, paper_kept = whiten_difference(acts, difference, torch.float32)
    expected = torch.linalg.pinv(covariance.float()).double() @ difference
    _close(expected, paper, atol=1e-6 * float(expected.abs().max()))
    eigenvalues = torch.linalg.eigvalsh(covariance)  # float64, ascending
    float32 = torch.linalg.svdvals(covariance.float())
    assert paper_kept == int((float32 > torch.finfo(torch.float32).eps * width * float32[0]).sum())
    assert 20 < paper_kept < 45  # eigenvalues above ~7.6e-6: about 36 of 64
    exact, exact_kept = whiten_difference(acts, difference)  # the default: float64
    assert exact_kept == width
    _close(torch.linalg.solve(covariance, difference), exact, atol=1e-6 * float(exact.abs().max()))
    for rtol in (1e-2, 1e-5):
        _, kept = whiten_difference(acts, difference, torch.float64, rtol)
        assert kept == int((eigenvalues > rtol * eigenvalues[-1]).sum())
    # the two vectors point in nearly unrelated directions
    assert torch.nn.functional.cosine_similarity(paper, exact, dim=0).abs() < 0.5
    with pytest.raises(ValueError, match="pinv_dtype must be torch.float32 or torch.float64"):
        whiten_difference(acts, difference, torch.bfloat16)
    with pytest.raises(ValueError, match="pinv_rtol must be None or a number >= 0"):
        whiten_difference(acts, difference, rtol=-1.0)


# ---------------------------------------------------------------------------------- sweeps
@torch.no_grad()
def test_state_mode_equals_the_papers_procedure(model):
    """Prefill all but the last token, add m * delta to every state component of layer l in
    the model's own cache, step the last token: p_match at that token."""
    tap = statetap.attach(model)
    pairs = _pairs(5)
    vectors = _random_vectors(tap, 0.5)
    multipliers, layers = [-1.5, 0.7, 2.0], [0, 2]
    result = sweep(
        tap, pairs, vectors, multipliers, layers, modes=["state"], batch_size=4, progress=False
    )
    moved = 0.0
    for row, ids in enumerate(pairs.prompts.ids):
        yes, no = int(pairs.matching[row]), int(pairs.not_matching[row])
        for i, layer in enumerate(layers):
            for j, m in enumerate(multipliers):
                prefix = model(torch.tensor([ids[:-1]]), use_cache=True)
                cache = tap.adapter.output_cache(prefix)
                deltas = {k: m * v for k, v in vectors.state(layer).items()}
                _add_to_own_state(model, cache, layer, deltas)
                step = model(torch.tensor([ids[-1:]]), **tap.adapter.cache_kwargs(cache))
                logits = step.logits[0, -1]
                p, nonsense = _hand_p(logits, yes, no)
                _close(p, result.p_match[0, i, j, row])
                _close(nonsense, result.nonsense[0, i, j, row])
                moved = max(moved, abs(p - float(result.baseline_p_match[row])))
    assert moved > 1e-3  # the edits changed the answer


@torch.no_grad()
@pytest.mark.parametrize("mode", ["residual", "residual-last2", "instruction", "both"])
def test_residual_modes_equal_a_forward_hook_on_the_plain_model(mamba, mode):
    """m * u added to the residual stream after block l (the next block's input) at the steered
    positions by a hook on the plain model; "both" also edits the model's cache before the last
    token (prefill, edit, step, the hook adding at the stepped token)."""
    tap = statetap.attach(mamba)
    pairs = _pairs(4)
    vectors = _random_vectors(tap)
    name, _, last = mode.partition("-last")
    steering = steering_mode(name, last=int(last or 1))
    multipliers, layers = [-2.0, 1.0], [1, 2]
    result = sweep(
        tap, pairs, vectors, multipliers, layers, modes=[steering], batch_size=3, progress=False
    )
    for row, ids in enumerate(pairs.prompts.ids):
        n, head = len(ids), pairs.prompts.instruction[row]
        assert bytes(t - 3 for t in ids[:head]).decode() == TOKENIZER.decode(ids).split(" A: (")[0]
        first = head if name == "instruction" else n - steering.last
        for i, layer in enumerate(layers):
            following = mamba.backbone.layers[layer + 1] if layer < 2 else mamba.backbone.norm_f
            for j, m in enumerate(multipliers):
                u = m * vectors["residual", layer]
                call = {"offset": 0}  # the prompt position of the current call's first token

                def add(module, args, u=u, first=first, call=call):
                    hidden = args[0].clone()
                    hidden[:, max(first - call["offset"], 0) :] += u
                    return (hidden, *args[1:])

                handle = following.register_forward_pre_hook(add)
                try:
                    if name == "both":
                        prefix = mamba(torch.tensor([ids[:-1]]), use_cache=True)
                        deltas = {k: m * v for k, v in vectors.state(layer).items()}
                        cache = tap.adapter.output_cache(prefix)
                        _add_to_own_state(mamba, cache, layer, deltas)
                        call["offset"] = n - 1
                        step = mamba(torch.tensor([ids[-1:]]), **tap.adapter.cache_kwargs(cache))
                        logits = step.logits[0, -1]
                    else:
                        logits = mamba(torch.tensor([ids])).logits[0, -1]
                finally:
                    handle.remove()
                yes, no = int(pairs.matching[row]), int(pairs.not_matching[row])
                p, nonsense = _hand_p(logits, yes, no)
                _close(p, result.p_match[0, i, j, row])
                _close(nonsense, result.nonsense[0, i, j, row])


@torch.no_grad()
def test_batched_sweep_equals_one_multiplier_at_a_time(model):
    tap = statetap.attach(model)
    pairs = _pairs(5)
    vectors = _random_vectors(tap, 0.5)
    multipliers = [-3.0, 0.0, 0.5, 1.5]
    modes = ["both", "instruction", steering_mode("state", last=2, state_scale=2.0)]
    batched = sweep(tap, pairs, vectors, multipliers, modes=modes, batch_size=7, progress=False)
    assert batched.p_match.shape == (3, 3, 4, 5) and not batched.p_match.isnan().any()
    for j, m in enumerate(multipliers):
        single = sweep(tap, pairs, vectors, [m], modes=modes, batch_size=2, progress=False)
        _close(single.p_match[:, :, 0], batched.p_match[:, :, j], atol=1e-6)
        _close(single.nonsense[:, :, 0], batched.nonsense[:, :, j], atol=1e-6)
        _close(single.baseline_p_match, batched.baseline_p_match, atol=1e-6)


@torch.no_grad()
def test_multiplier_zero_equals_the_unsteered_model(model):
    tap = statetap.attach(model)
    pairs = _pairs(6)
    vectors = _random_vectors(tap)
    modes = ["residual", "instruction", "state", "both"]
    result = sweep(tap, pairs, vectors, [0.0, 3.0], modes=modes, batch_size=4, progress=False)
    for row, ids in enumerate(pairs.prompts.ids):
        logits = model(torch.tensor([ids])).logits[0, -1]
        p, nonsense = _hand_p(logits, int(pairs.matching[row]), int(pairs.not_matching[row]))
        _close(p, result.baseline_p_match[row])
        _close(nonsense, result.baseline_nonsense[row])
        _close(torch.full((4, 3), p), result.p_match[:, :, 0, row])
        _close(torch.full((4, 3), nonsense), result.nonsense[:, :, 0, row])
    steered = (result.p_match[:, :, 1] - result.baseline_p_match).abs().amax(-1)  # [modes, layers]
    assert bool((steered > 1e-4).all())


# ---------------------------------------------------------------------------------- metrics
def test_p_match_nonsense_and_summaries_against_a_hand_computation():
    logits = 3 * torch.randn(3, 5, 11)
    yes = torch.randint(0, 11, (3, 5))
    no = (yes + torch.randint(1, 11, (3, 5))) % 11
    p_match, nonsense = answer_probabilities(logits, yes, no)
    for a in range(3):
        for b in range(5):
            p, bad = _hand_p(logits[a, b], int(yes[a, b]), int(no[a, b]))
            _close(p, p_match[a, b], 1e-6)
            _close(bad, nonsense[a, b], 1e-6)
    # summaries: p_match [modes=2, layers=3, M=5, N=7]
    p = torch.rand(2, 3, 5, 7)
    baseline = torch.rand(7)
    multipliers = torch.tensor([-1.5, -0.5, 0.0, 0.5, 3.0])
    effect, spread = max_effect_over_layers(p, baseline, multipliers), behaviour_range(p, baseline)
    for mode in range(2):
        changes = [
            [float(p[mode, l, j].mean() - baseline.mean()) for j in range(5)] for l in range(3)
        ]
        for j, m in enumerate(multipliers.tolist()):
            column = [changes[l][j] for l in range(3)]
            _close(min(column) if m < 0 else max(column), effect[mode, j], 1e-6)
        flat = [c for layer in changes for c in layer]
        _close(max(max(flat), 0) - min(min(flat), 0), spread[mode], 1e-6)


# ---------------------------------------------------------------------------------- data, errors
def test_json_jsonl_templates_and_letter_formats(tmp_path):
    rows = _rows(5)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = load_ab_items(tmp_path / "d.json")
    assert items == load_ab_items(tmp_path / "d.jsonl") == load_ab_items(iter(rows))
    numbered = ab_pairs(items, TOKENIZER, TEMPLATES["hermes"], letters="1-2")
    for row, item in zip(range(5), items):
        text = bytes(t - 3 for t in numbered.prompts.ids[row]).decode()
        question = item.question.replace("(A)", "(1)").replace("(B)", "(2)")
        assert text == f"\x16user\n{question}\x17\n\x16assistant\n("
        assert numbered.prompts.instruction[row] == len(text) - 1
        expected = {"A": ord("1") + 3, "B": ord("2") + 3}
        assert int(numbered.matching[row]) == expected[item.matching]
        assert int(numbered.not_matching[row]) == expected[item.not_matching]
    chat = ByT5Tokenizer(extra_ids=0)
    chat.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    pairs = ab_pairs(items[:1], chat, PromptTemplate(chat=True, system="be brief", response="("))
    text = bytes(t - 3 for t in pairs.prompts.ids[0]).decode()
    assert text == f"<system>be brief\n<user>{items[0].question}\n<assistant>("


def test_bad_input_raises_errors_naming_the_argument(mamba):
    with pytest.raises(ValueError, match="row 1 has no 'answer_not_matching_behavior'"):
        load_ab_items([_rows(1)[0], {"question": "q", "answer_matching_behavior": "(A)"}])
    with pytest.raises(ValueError, match=r"row 0: answer_matching_behavior must be '\(A\)' or"):
        load_ab_items(
            [
                {
                    "question": "q",
                    "answer_matching_behavior": "(C)",
                    "answer_not_matching_behavior": "(A)",
                }
            ]
        )
    with pytest.raises(ValueError, match="matching answer ' True' of row 0 is not a single token"):
        ContrastPairs.from_texts(TOKENIZER, ["2 + 2 = 4. Alice:"], " True", " False")
    with pytest.raises(ValueError, match="row 1: the matching and the non-matching answer are the"):
        ContrastPairs(Prompts([[5, 6, 7], [5, 6, 8]]), torch.tensor([1, 2]), torch.tensor([3, 2]))
    tap = statetap.attach(mamba)
    pairs = _pairs(2)
    vectors = _random_vectors(tap)
    vectors.vectors["residual", 1] = torch.zeros(31)  # as from a model with another width
    with pytest.raises(ValueError, match=r"vectors\['residual', 1\] has shape \[31\], but this"):
        sweep(tap, pairs, vectors, [1.0], progress=False)
    rwkv = statetap.attach(_build("rwkv"))  # allowed as another model, still refused as unfit
    with pytest.raises(ValueError, match="vectors hold the state components"):
        sweep(tap, pairs, _random_vectors(rwkv), [1.0], modes=["state"], other_model=True)
    with pytest.raises(ValueError, match="vectors have no 'residual' vector at layer 2"):
        only = SteeringVectors({("residual", 0): torch.zeros(32)})
        sweep(tap, pairs, only, [1.0], layers=[2], other_model=True)
    with pytest.raises(TypeError, match="pairs must be ContrastPairs"):
        sweep(tap, pairs.prompts, _random_vectors(tap), [1.0])
    short = ContrastPairs(Prompts([[5, 6]]), torch.tensor([1]), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"prompt 0 \(2 tokens\) is too short"):
        sweep(tap, short, _random_vectors(tap), [1.0], progress=False)
    no_instruction = ContrastPairs(Prompts([[5, 6, 7, 8]]), torch.tensor([1]), torch.tensor([2]))
    with pytest.raises(ValueError, match="no instruction boundary"):
        sweep(tap, no_instruction, _random_vectors(tap), [1.0], modes=["instruction"])
    with pytest.raises(ValueError, match="mode must be one of residual, instruction, state, both"):
        steering_mode("states")


# ---------------------------------------------------------------------------------- storage, CLI
@torch.no_grad()
def test_storage_roundtrip_plots_and_a_refused_mismatch(mamba, tmp_path):
    tap = statetap.attach(mamba)
    pairs = _pairs(3)
    vectors = mean_difference(tap, *pairs.completions(), progress=False)
    save_vectors(vectors, tmp_path / "v")
    loaded = load_vectors(tmp_path / "v")
    assert loaded.meta == json.loads(json.dumps(vectors.meta))
    assert all(torch.equal(vectors[k], loaded[k]) for k in vectors.vectors)
    result = sweep(tap, pairs, loaded, [-1.0, 1.0], modes=["residual", "state"], progress=False)
    save_sweep(result, tmp_path / "s")
    again = load_sweep(tmp_path / "s")
    assert again.modes == result.modes and again.multipliers == result.multipliers
    assert torch.equal(again.p_match, result.p_match)
    record = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert (
        record["summary"]["modes"]["state"]["behaviour_range"] == result.behaviour_range()[1].item()
    )
    assert record["meta"]["dataset"] == pairs.fingerprint()
    for path in (
        plot_layers(result, "state", tmp_path / "p" / "layers.png"),
        plot_modes({"x": {"residual": 0.1, "state": 0.05}}, tmp_path / "p" / "modes.svg"),
    ):
        assert path.stat().st_size > 1000
    # a tensor file that is not the one the JSON was written for
    (tmp_path / "v" / "vectors.safetensors").write_bytes(
        (tmp_path / "s" / "sweep.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="is not the file"):
        load_vectors(tmp_path / "v")


def test_cli_vectors_then_sweep(tmp_path, capsys):
    import argparse

    model = _build("mamba")
    model.save_pretrained(tmp_path / "model")
    TOKENIZER.save_pretrained(tmp_path / "model")
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in _rows(5)))
    (tmp_path / "test.json").write_text(json.dumps(_rows(3)))
    parser = argparse.ArgumentParser(prog="statetap")
    add_steer_commands(parser.add_subparsers(dest="command", required=True))
    common = f"--model {tmp_path}/model --template hermes --letters 1-2"  # no spaces in tmp_path
    args = parser.parse_args(
        f"steer vectors {common} --dataset {tmp_path}/train.jsonl --layers 0 2 "
        f"--out {tmp_path}/v".split()
    )
    assert args.run(args) == 0
    vectors = load_vectors(tmp_path / "v")
    assert vectors.layers == [0, 2] and vectors.meta["source"]["letters"] == "1-2"
    expected = mean_difference(
        statetap.attach(model),
        *ab_pairs(
            load_ab_items(tmp_path / "train.jsonl"), TOKENIZER, TEMPLATES["hermes"], "1-2"
        ).completions(),
        layers=[0, 2],
        progress=False,
    )
    for key in expected.vectors:
        _close(expected[key], vectors[key], 1e-6)
    args = parser.parse_args(
        f"steer sweep {common} --dataset {tmp_path}/test.json --vectors {tmp_path}/v "
        f"--multipliers -1 0 2 --modes residual both --out {tmp_path}/s".split()
    )
    assert args.run(args) == 0
    result = load_sweep(tmp_path / "s")
    assert result.p_match.shape == (2, 2, 3, 3) and result.layers == [0, 2]
    assert {p.name for p in (tmp_path / "s").iterdir()} >= {
        "layers-residual.png",
        "layers-both.png",
        "modes.png",
    }
    assert "unsteered p_match" in capsys.readouterr().out


@torch.no_grad()
def test_vectors_of_another_model_are_refused_naming_both(mamba):
    """The issue's case: residual widths match (32), so only the recorded identity can tell."""
    pairs = _pairs(3)
    rwkv_vectors = mean_difference(
        statetap.attach(_build("rwkv")), *pairs.completions(), progress=False
    )
    tap = statetap.attach(mamba)
    with pytest.raises(ValueError, match="RwkvForCausalLM.*MambaForCausalLM"):
        sweep(tap, pairs, rwkv_vectors, [1.0], modes=["residual"], progress=False)
    with pytest.raises(ValueError, match="RwkvForCausalLM.*MambaForCausalLM"):
        generate_steered(tap, pairs.prompts, rwkv_vectors, 0, 1.0, max_new_tokens=2)
    # the same class with another config (a fifth of the state) is another model too
    torch.manual_seed(0)
    other = MambaForCausalLM(
        MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=4, num_hidden_layers=3)
    ).eval()
    other_vectors = mean_difference(statetap.attach(other), *pairs.completions(), progress=False)
    with pytest.raises(ValueError, match="config_sha256"):
        sweep(tap, pairs, other_vectors, [1.0], progress=False)
    with pytest.raises(ValueError, match="no 'identity'"):
        sweep(tap, pairs, SteeringVectors(rwkv_vectors.vectors), [1.0], progress=False)
    # asked for, it runs and says so in the result
    result = sweep(tap, pairs, rwkv_vectors, [1.0], progress=False, other_model=True)
    assert result.meta["other_model"] is True
    assert result.meta["vectors"]["identity"]["model_class"] == "RwkvForCausalLM"
    assert result.meta["identity"]["model_class"] == "MambaForCausalLM"


def test_cli_sweep_refuses_vectors_of_another_model_or_prompt_format(tmp_path):
    import argparse

    for name in ("mamba", "rwkv"):
        _build(name).save_pretrained(tmp_path / name)
        TOKENIZER.save_pretrained(tmp_path / name)
    (tmp_path / "rows.json").write_text(json.dumps(_rows(3)))
    parser = argparse.ArgumentParser(prog="statetap")
    add_steer_commands(parser.add_subparsers(dest="command", required=True))

    def run(line: str) -> int:
        args = parser.parse_args(f"{line} --dataset {tmp_path}/rows.json".split())
        return args.run(args)

    assert run(f"steer vectors --model {tmp_path}/rwkv --letters 1-2 --out {tmp_path}/v") == 0
    sweep_line = f"steer sweep --vectors {tmp_path}/v --multipliers 1 --out {tmp_path}/s"
    with pytest.raises(ValueError, match="letters: recorded '1-2', this run 'A-B'"):
        run(f"{sweep_line} --model {tmp_path}/rwkv --letters A-B")
    with pytest.raises(ValueError, match="RwkvForCausalLM.*MambaForCausalLM"):
        run(f"{sweep_line} --model {tmp_path}/mamba --letters 1-2")
    assert not (tmp_path / "s").exists()  # nothing recorded for the other model
    assert run(f"{sweep_line} --model {tmp_path}/mamba --letters 1-2 --other-model") == 0
    record = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert record["meta"]["other_model"] is True
    assert record["meta"]["vectors"]["model"] == f"{tmp_path}/rwkv"
    assert record["meta"]["model"] == f"{tmp_path}/mamba"


def test_cli_dtype_loads_the_model_in_that_dtype(tmp_path):
    import argparse

    _build("mamba").save_pretrained(tmp_path / "m")
    TOKENIZER.save_pretrained(tmp_path / "m")
    (tmp_path / "rows.json").write_text(json.dumps(_rows(2)))
    parser = argparse.ArgumentParser(prog="statetap")
    add_steer_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        f"steer vectors --model {tmp_path}/m --dtype bfloat16 --dataset {tmp_path}/rows.json "
        f"--out {tmp_path}/v".split()
    )
    assert args.run(args) == 0
    assert load_vectors(tmp_path / "v").meta["identity"]["model_class"] == "MambaForCausalLM"
    with pytest.raises(SystemExit):
        parser.parse_args(f"steer vectors --dtype float8 --dataset x --out {tmp_path}/w".split())


def test_layer_plot_ticks_are_whole_layers(mamba, monkeypatch, tmp_path):
    """Two layers (0 and 2) gave matplotlib's ticks 0, 0.25, ... 2."""
    import statetap.interp.steering.plots as plots

    tap = statetap.attach(mamba)
    pairs = _pairs(2)
    vectors = mean_difference(tap, *pairs.completions(), layers=[0, 2], progress=False)
    result = sweep(tap, pairs, vectors, [1.0], progress=False)
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: figures.append(figure))
    plot_layers(result, "residual", tmp_path / "layers.png")
    for axes in figures[0].axes:  # p_match, nonsense
        ticks = axes.get_xticks()
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_layer_plot_shows_p_match_and_nonsense_per_multiplier(mamba, monkeypatch, tmp_path):
    """The two panels' lines are the prompts' mean p_match and nonsense (%) of each multiplier
    at each layer, and the unsteered model's."""
    import statetap.interp.steering.plots as plots

    tap = statetap.attach(mamba)
    pairs = _pairs(3)
    vectors = _random_vectors(tap)
    result = sweep(tap, pairs, vectors, [-2.0, 3.0], modes=["residual", "state"], progress=False)
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: figures.append(figure))
    plot_layers(result, "state", tmp_path / "layers.png")
    panels = figures[0].axes
    assert [axes.get_ylabel() for axes in panels] == [
        "p(answer matching behaviour) %",
        "nonsense: p(neither answer) %",
    ]
    for axes, values, baseline in zip(
        panels,
        (result.p_match[1], result.nonsense[1]),
        (result.baseline_p_match, result.baseline_nonsense),
    ):
        *steered, unsteered = axes.get_lines()
        for j, line in enumerate(steered):
            assert list(line.get_xdata()) == [0, 1, 2]
            hand = [100 * sum(values[l, j].tolist()) / 3 for l in range(3)]
            _close(torch.tensor(hand).double(), torch.tensor(line.get_ydata()).double(), 1e-4)
        _close(100 * sum(baseline.tolist()) / 3, float(unsteered.get_ydata()[0]), 1e-4)


@pytest.mark.parametrize("module", ["dataset", "vectors", "sweeps", "generate"])
def test_docstring_examples(module):
    """tests/test_docs.py walks the ``statetap/`` folder only; ``interp/`` is checked here."""
    import doctest
    import importlib

    loaded = importlib.import_module(f"statetap.interp.steering.{module}")
    result = doctest.testmod(loaded, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
