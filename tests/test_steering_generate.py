"""Steered generation at several layers at once against the plain model run by hand.

``generate_steered`` with a vector and a multiplier per layer, greedy and sampled (temperature,
top-k, top-p, a seed), equals a token-by-token loop on the plain model: prefill all but the last
prompt token, add ``m_l * delta_l`` to every state component of each steered layer ``l`` in the
model's own cache (state modes), step the last prompt token and then each generated one with
forward pre-hooks adding ``m_l * u_l`` to the residual stream after each steered block (residual
modes, every generated token too), and pick each token by argmax or by transformers' own
warpers and ``torch.multinomial`` from the same seed.  Tiny random Mamba, Mamba-2, RWKV-4
(transformers) and RWKV-7 (statetap) models; prompts and vectors are drawn afresh each run.
"""

from __future__ import annotations

import pytest
import torch
from test_steering import (
    VOCAB,
    _add_to_own_state,
    _build,
    _random_vectors,
    one_thread,  # noqa: F401 (its autouse fixture: one thread per test)
)
from transformers import (
    LogitsProcessorList,
    RwkvForCausalLM,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import statetap
from statetap.interp.steering import Prompts, generate_steered, steering_mode
from statetap.interp.steering.generate import layer_multipliers
from statetap.kernels.examples import rel_error

NEW = 5
#: steered layers and their multipliers: the first and the last layer (read by the final norm)
MULTIPLIERS = {0: 1.5, 2: -2.0}
SAMPLING = dict(do_sample=True, temperature=0.7, top_k=12, top_p=0.9)


@pytest.fixture(scope="module", params=["mamba", "mamba2", "rwkv", "rwkv7"])
def tap(request):
    return statetap.attach(_build(request.param))


def _prompts(tap, sampled: bool) -> Prompts:
    """Two prompts of different lengths, left-padded in one batch; one for sampling (a batch's
    draws are one ``multinomial`` call) and for transformers' RWKV-4 (one-token steps of a
    batch are refused there, ``generate_steered``'s docstring)."""
    one = sampled or isinstance(tap.model, RwkvForCausalLM)
    lengths = [7] if one else [7, 4]
    return Prompts([torch.randint(3, VOCAB, (n,)).tolist() for n in lengths])


def _pick(sampled: bool):
    """The token ``generate`` picks from the logits ``[1, V]``: argmax, or a draw from the
    warped distribution (transformers' warpers in ``generate``'s order)."""
    warpers = LogitsProcessorList(
        [
            TemperatureLogitsWarper(SAMPLING["temperature"]),
            TopKLogitsWarper(SAMPLING["top_k"]),
            TopPLogitsWarper(SAMPLING["top_p"]),
        ]
    )

    def pick(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not sampled:
            return logits.argmax(-1, keepdim=True)
        return torch.multinomial(warpers(ids, logits).softmax(-1), num_samples=1)

    return pick


@torch.no_grad()
def _hand_loop(tap, prompt, vectors, multipliers, mode, pick) -> tuple[list[int], list]:
    """The generated tokens and the logits ``[1, V]`` of each step, by hand (see the module
    docstring)."""
    model, adapter = tap.model, tap.adapter
    ids = torch.tensor([prompt])
    cache = adapter.output_cache(model(ids[:, :-1], use_cache=True))
    if mode.state:
        for layer, m in multipliers.items():
            deltas = {site: m * delta for site, delta in vectors.state(layer).items()}
            _add_to_own_state(model, cache, layer, deltas)
    handles = []
    if mode.residual is not None:
        for layer, m in multipliers.items():
            last = layer == adapter.n_layers - 1
            reader = adapter.final_norm if last else adapter.blocks[layer + 1]
            u = m * vectors["residual", layer]
            hook = reader.register_forward_pre_hook(lambda _, args, u=u: (args[0] + u, *args[1:]))
            handles.append(hook)
    logits = []
    try:
        for _ in range(NEW):
            out = model(ids[:, -1:], **adapter.cache_kwargs(cache))
            cache = adapter.output_cache(out)
            logits.append(out.logits[:, -1].float())
            ids = torch.cat([ids, pick(ids, logits[-1])], 1)
    finally:
        for handle in handles:
            handle.remove()
    return ids[0, len(prompt) :].tolist(), logits


@pytest.mark.parametrize("decoding", ["greedy", "sampled"])
@pytest.mark.parametrize("mode_name", ["residual", "state", "both"])
def test_multi_layer_steering_equals_a_loop_editing_each_layer(tap, mode_name, decoding):
    sampled = decoding == "sampled"
    mode = steering_mode(mode_name)
    prompts, vectors, seed = _prompts(tap, sampled), _random_vectors(tap, 0.5), 1234
    options = SAMPLING if sampled else dict(do_sample=False)
    out = generate_steered(
        tap,
        prompts,
        vectors,
        list(MULTIPLIERS),
        list(MULTIPLIERS.values()),
        mode=mode,
        seed=seed,
        max_new_tokens=NEW,
        eos_token_id=[],
        pad_token_id=0,
        return_dict_in_generate=True,
        output_logits=True,
        **options,
    )
    for row, prompt in enumerate(prompts.ids):
        torch.manual_seed(seed)
        tokens, logits = _hand_loop(tap, prompt, vectors, MULTIPLIERS, mode, _pick(sampled))
        assert out.sequences[row, -NEW:].tolist() == tokens
        for k in range(NEW):
            assert rel_error(logits[k][0], out.output.logits[k][row]) <= 1e-5, k
        # every layer counts: steering the first layer only gives other logits
        first = dict(list(MULTIPLIERS.items())[:1])
        torch.manual_seed(seed)
        _, fewer = _hand_loop(tap, prompt, vectors, first, mode, _pick(sampled))
        assert rel_error(fewer[-1], logits[-1]) > 1e-3


@torch.no_grad()
def test_seed_reproduces_the_draws_and_leaves_the_callers_random_state(tap):
    prompts, vectors = _prompts(tap, sampled=True), _random_vectors(tap, 0.5)
    options = dict(max_new_tokens=8, eos_token_id=[], pad_token_id=0, **SAMPLING)
    runs = []
    for seed in (7, 7, 8):
        before = torch.random.get_rng_state()
        runs.append(generate_steered(tap, prompts, vectors, "all", 1.0, seed=seed, **options))
        assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    assert not torch.equal(runs[0].sequences, runs[2].sequences)


def test_layers_and_multipliers_are_checked(tap):
    n = tap.adapter.n_layers
    assert layer_multipliers(tap, -1, 2.0) == {n - 1: 2.0}
    assert layer_multipliers(tap, [2, 0], [1.0, -3]) == {2: 1.0, 0: -3.0}
    assert layer_multipliers(tap, "all", 0.5) == {layer: 0.5 for layer in range(n)}
    with pytest.raises(ValueError, match=r"layers \[0, -3\] name a layer twice"):
        layer_multipliers(tap, [0, -3], 1.0)
    with pytest.raises(ValueError, match=r"2 multipliers for 3 layers \[0, 1, 2\]"):
        layer_multipliers(tap, "all", [1.0, 2.0])
    with pytest.raises(ValueError, match=r"layers \[3\] are out of range"):
        layer_multipliers(tap, [3], 1.0)
    with pytest.raises(TypeError, match="multiplier must be a number"):
        layer_multipliers(tap, [0], ["1"])
    prompts, vectors = _prompts(tap, sampled=True), _random_vectors(tap)
    with pytest.raises(TypeError, match="seed must be an int"):
        generate_steered(tap, prompts, vectors, 0, 1.0, seed=1.5, max_new_tokens=2)
    only_first = type(vectors)(
        {key: value for key, value in vectors.vectors.items() if key[1] == 0}, vectors.meta
    )
    with pytest.raises(ValueError, match="vectors have no 'residual' vector at layer 2"):
        generate_steered(tap, prompts, only_first, [0, 2], 1.0, max_new_tokens=2)


def test_cli_generate_equals_the_api_and_vectors_record_the_whitening(tmp_path, capsys):
    import json

    from test_steering import TOKENIZER, _rows

    from statetap.cli import main
    from statetap.interp.steering import load_vectors

    model = _build("mamba")
    model.save_pretrained(tmp_path / "model")
    TOKENIZER.save_pretrained(tmp_path / "model")
    (tmp_path / "rows.json").write_text(json.dumps(_rows(6)))
    common = f"--model {tmp_path}/model --template hermes"

    def run(line: str) -> int:  # the whole command line: its preflight included
        return main(line.split())

    vectors_line = f"steer vectors {common} --dataset {tmp_path}/rows.json --whiten"
    assert run(f"{vectors_line} --pinv-dtype float32 --out {tmp_path}/v") == 0
    vectors = load_vectors(tmp_path / "v")
    whitening = vectors.meta["whitening"]
    assert whitening["pinv_dtype"] == "float32" and whitening["pinv_rtol"] is None
    assert set(whitening["kept"]) == {"0", "1", "2"}  # JSON keys; 12 samples: rank <= 11
    assert all(1 <= kept <= 11 for kept in whitening["kept"].values())
    line = (
        f"steer generate {common} --vectors {tmp_path}/v --prompt abc hello --layers 0 -1 "
        f"--multipliers 1.5 -2 --mode both --max-new-tokens 6 --do-sample --temperature 0.7 "
        f"--top-k 12 --seed 5 --out {tmp_path}/g.json"
    )
    assert run(line) == 0
    record = json.loads((tmp_path / "g.json").read_text())
    tap = statetap.attach(model)
    for generation, question in zip(record["generations"], ["abc", "hello"]):
        text = f"\x16user\n{question}\x17\n\x16assistant\n"
        prompts = Prompts.from_texts(TOKENIZER, [text])
        out = generate_steered(
            tap,
            prompts,
            vectors,
            [0, 2],
            [1.5, -2.0],
            mode="both",
            seed=5,
            max_new_tokens=6,
            pad_token_id=TOKENIZER.pad_token_id,
            do_sample=True,
            temperature=0.7,
            top_k=12,
        )
        assert generation["prompt"] == text
        assert generation["generation"] == TOKENIZER.decode(out.sequences[0, -6:])
    assert "wrote" in capsys.readouterr().out
