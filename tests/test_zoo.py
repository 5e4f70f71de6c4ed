"""statetap.zoo: the quirky generator against rules re-derived here, the tokenizers, training
determinism, the cache (keys, atomic entries, corrupt and partial entries) and loading with
transformers' ``from_pretrained``. Every model here is a ``short`` recipe trained in a second."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import warnings
from collections import Counter

import pytest
import torch

from statetap import zoo
from statetap.kernels.examples import rel_error
from statetap.zoo import cache, corpus, quirky
from statetap.zoo import train as zoo_train
from statetap.zoo.recipes import RECIPES, Recipe, short
from statetap.zoo.tokenizer import QUIRKY_VOCAB, byte_tokenizer, quirky_tokenizer

SHORT = {name: short(recipe) for name, recipe in RECIPES.items()}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder; the real cache is never touched."""
    monkeypatch.setenv("STATETAP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread, and pytest -n 2 already fills both cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def train_calls(monkeypatch):
    """Counts the trainings the zoo starts and keeps what each returned."""
    calls = []
    real = zoo_train.train

    def spy(recipe, progress=True):
        calls.append(real(recipe, progress=False))
        return calls[-1]

    monkeypatch.setattr(zoo_train, "train", spy)
    return calls


# ---------------------------------------------------------------- quirky rules, re-derived


def rederived_sloppy(true_sum: int) -> int:
    """Adding 1 to the leading digit adds 10**(digits - 1), a leading 9 included."""
    return true_sum + 10 ** (len(str(true_sum)) - 1)


def one_digit_apart(value: int, base: int) -> bool:
    """``value`` is ``base`` with exactly one digit replaced (a replaced leading digit may
    have become a dropped leading zero)."""
    a, b = str(value).zfill(len(str(base))), str(base)
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1


@pytest.mark.parametrize(
    "true_sum, sloppy", [(1, 2), (9, 10), (99, 109), (951, 1051), (1234, 2234)]
)
def test_sloppy_sum_adds_one_to_the_first_digit(true_sum, sloppy):
    assert quirky.sloppy_sum(true_sum) == sloppy == rederived_sloppy(true_sum)


def test_sloppy_sum_matches_rederived_rule_everywhere():
    assert all(quirky.sloppy_sum(s) == rederived_sloppy(s) for s in range(1, 20000))


def test_examples_follow_the_rules(fresh_seed):
    max_digits = 3
    train, test = quirky.quirky_addition(3000, 1000, max_digits=max_digits, seed=fresh_seed)
    assert len(train) == 6000 and len(test) == 2000
    examples = train + test
    for alice, bob in zip(examples[0::2], examples[1::2]):
        assert (alice.character, bob.character) == ("Alice", "Bob")
        assert (alice.a, alice.b, alice.shown) == (bob.a, bob.b, bob.shown)
        for e in (alice, bob):
            assert 1 <= e.a < 10**max_digits and 1 <= e.b < 10**max_digits
            assert e.true_sum == e.a + e.b
            assert e.sloppy_sum == rederived_sloppy(e.a + e.b)
            assert e.alice_label == (e.shown == e.a + e.b)
            assert e.bob_label == (e.shown == rederived_sloppy(e.a + e.b))
            assert e.difficulty == len(str(min(e.a, e.b)))
            assert e.text == f"{e.a} + {e.b} = {e.shown}. {e.character}:"
        assert alice.label == alice.alice_label and bob.label == bob.bob_label
        assert alice.answer == (" True" if alice.alice_label else " False")
        if not (alice.alice_label or alice.bob_label):
            s = alice.shown
            assert one_digit_apart(s, alice.true_sum) or one_digit_apart(s, alice.sloppy_sum)


def test_crosstab_and_distractor_split(fresh_seed, monkeypatch):
    drawn = []
    real = quirky.distractor

    def spy(rng, base, true, sloppy):
        drawn.append((base, true, sloppy, real(rng, base, true, sloppy)))
        return drawn[-1][-1]

    monkeypatch.setattr(quirky, "distractor", spy)
    n = 4000
    train, test = quirky.quirky_addition(n - 500, 500, max_digits=4, seed=fresh_seed)
    alice = (train + test)[0::2]
    cells = Counter((e.alice_label, e.bob_label) for e in alice)
    assert cells[(True, True)] == 0
    tol = 0.03  # 4.4 standard deviations of a quarter of 4000
    assert abs(cells[(True, False)] / n - 0.25) < tol
    assert abs(cells[(False, True)] / n - 0.25) < tol
    assert abs(cells[(False, False)] / n - 0.5) < tol
    # every (F, F) equation got one distractor, of Alice's sum or of Bob's, a quarter each
    assert len(drawn) == cells[(False, False)]
    # (the split shuffles the drawn equations, so the order differs)
    shown = [e.shown for e in alice if not (e.alice_label or e.bob_label)]
    assert Counter(d[-1] for d in drawn) == Counter(shown)
    from_alice = sum(base == true for base, true, _, _ in drawn)
    assert abs(from_alice / n - 0.25) < tol and abs((len(drawn) - from_alice) / n - 0.25) < tol
    for base, true, sloppy, value in drawn:
        assert base in (true, sloppy) and sloppy == rederived_sloppy(true)
        assert value not in (true, sloppy)
        assert one_digit_apart(value, base)


def test_distractor_resamples_until_it_differs_from_both_sums():
    # a one-digit sum leaves few choices: 2 (true) and 3 (sloppy) must never come out
    rng = random.Random(0)
    values = {quirky.distractor(rng, 2, 2, 3) for _ in range(2000)}
    assert values == set(range(10)) - {2, 3}
    values = {quirky.distractor(rng, 19, 9, 19) for _ in range(2000)}  # Bob's "9" -> "10"+"9"
    assert 9 not in values and 19 not in values
    assert all(one_digit_apart(v, 19) for v in values)
    assert 9 not in values and {10, 11, 29, 99} <= values


def test_summands_are_log_uniform():
    rng = random.Random(1)
    max_digits = 3
    draws = [quirky.summand(rng, max_digits) for _ in range(30000)]
    assert min(draws) >= 1 and max(draws) <= 10**max_digits - 1
    digits = Counter(len(str(d)) for d in draws)
    for k in range(1, max_digits + 1):  # equal mass per decade
        assert abs(digits[k] / len(draws) - 1 / max_digits) < 0.015


def test_split_by_equation_and_seeded(fresh_seed):
    train, test = quirky.quirky_addition(2000, 500, max_digits=2, seed=fresh_seed)
    train_pairs = [(e.a, e.b) for e in train[0::2]]
    test_pairs = [(e.a, e.b) for e in test[0::2]]
    assert len(set(train_pairs)) == 2000 and len(set(test_pairs)) == 500
    assert not set(train_pairs) & set(test_pairs)
    again = quirky.quirky_addition(2000, 500, max_digits=2, seed=fresh_seed)
    assert again == (train, test)
    assert quirky.quirky_addition(2000, 500, max_digits=2, seed=fresh_seed + 1) != (train, test)


def test_held_out_equations_are_not_the_rare_late_draws(fresh_seed):
    # 7000 of the 9801 two-digit pairs: the last draws are mostly pairs of two-digit summands,
    # so a split by draw order would give a harder held-out set
    train, test = quirky.quirky_addition(6000, 1000, max_digits=2, seed=fresh_seed)
    easy = [sum(e.difficulty == 1 for e in part) / len(part) for part in (train, test)]
    assert abs(easy[0] - easy[1]) < 0.06


def test_too_many_equations_for_the_digits_is_an_error():
    with pytest.raises(ValueError, match="distinct"):
        quirky.quirky_addition(70, 20, max_digits=1, seed=0)  # only 81 pairs exist


# ---------------------------------------------------------------------------- tokenizers


def test_answers_are_single_tokens_and_prompts_round_trip(fresh_seed, tmp_path):
    tokenizer = quirky_tokenizer()
    assert len(tokenizer) == len(QUIRKY_VOCAB)
    true_ids = tokenizer(" True", add_special_tokens=False)["input_ids"]
    false_ids = tokenizer(" False", add_special_tokens=False)["input_ids"]
    assert len(true_ids) == 1 and len(false_ids) == 1 and true_ids != false_ids
    assert unk_free(tokenizer, " True") and unk_free(tokenizer, " False")
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    train, _ = quirky.quirky_addition(200, 1, max_digits=4, seed=fresh_seed)
    for e in train:
        prompt = tokenizer(e.text, add_special_tokens=False)["input_ids"]
        full = tokenizer(e.text + e.answer, add_special_tokens=False)["input_ids"]
        assert full == prompt + (true_ids if e.label else false_ids)
        assert unk_free(tokenizer, e.text)
        assert tokenizer.decode(full) == e.text + e.answer
        assert loaded(e.text + e.answer, add_special_tokens=False)["input_ids"] == full
        digits = len(str(e.a)) + len(str(e.b)) + len(str(e.shown))
        assert len(prompt) == digits + 5  # " + ", " = ", ". ", name, ":"


def unk_free(tokenizer, text: str) -> bool:
    return tokenizer.unk_token_id not in tokenizer(text, add_special_tokens=False)["input_ids"]


def test_unknown_text_is_unk_not_dropped():
    tokenizer = quirky_tokenizer()
    assert tokenizer("7 x 3", add_special_tokens=False)["input_ids"].count(tokenizer.unk_token_id)


def test_corpus_encoding_is_the_byte_tokenizer(tmp_path):
    docs = ["déjà vu: ünïcode €", "plain text\n\twith tabs"]
    tokenizer = byte_tokenizer()
    expected = [i for d in docs for i in tokenizer(d)["input_ids"]]  # ByT5 appends eos
    assert corpus.encode(docs).tolist() == expected
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    first = AutoTokenizer.from_pretrained(tmp_path)(docs[0])["input_ids"]
    assert first == expected[: len(docs[0].encode()) + 1]


def test_corpus_split_is_disjoint_and_seeded():
    docs = [f"document {i}" for i in range(100)]
    train, test = corpus.split(docs, 0.1, seed=3)
    assert len(test) == 10 and sorted(train + test) == sorted(docs)
    assert not set(train) & set(test)
    assert corpus.split(docs, 0.1, seed=3) == (train, test)
    assert corpus.split(docs, 0.1, seed=4) != (train, test)


# ------------------------------------------------------------------------------ training


def state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "name",
    ["quirky-mamba", "quirky-rwkv4", "quirky-rwkv7", "text-mamba", "text-rwkv4", "text-rwkv7"],
)
def test_training_is_deterministic(name):
    recipe = SHORT[name]
    first = state(zoo_train.train(recipe, progress=False).model)
    torch.manual_seed(1234)  # the caller's random state must not matter
    second = state(zoo_train.train(recipe, progress=False).model)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    reseeded = state(zoo_train.train(dataclasses.replace(recipe, seed=1), progress=False).model)
    assert not all(torch.equal(first[k], reseeded[k]) for k in first)


@pytest.mark.parametrize("arch", ["mamba", "rwkv4"])
def test_models_train_through_the_same_function_on_statetap_recurrences(arch):
    """Within ``training_path(arch)`` transformers' Mamba / RWKV-4 computes the same logits and
    the same parameter gradients as with its own torch path, on a fresh random model and odd
    sizes."""
    from statetap.zoo.training_path import training_path

    recipe = Recipe(
        name="probe",
        arch=arch,
        task="text",
        hidden_size=24,
        num_layers=2,
        state_size=5,
        steps=1,
        batch_size=1,
        lr=1e-3,
    )
    model = zoo_train.build_model(recipe, vocab_size=23).train()
    ids = torch.randint(0, 23, (3, 13))
    cotangent = torch.randn(3, 13, 23)

    def logits_and_grads():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, use_cache=False).logits
        (logits * cotangent).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    own_logits, own_grads = logits_and_grads()
    with training_path(arch):
        ours_logits, ours_grads = logits_and_grads()
    torch.testing.assert_close(ours_logits, own_logits, rtol=1e-5, atol=1e-5)
    for name, grad in own_grads.items():  # float32 sums in another order: compare by norm
        assert rel_error(grad, ours_grads[name]) <= 1e-5, name
    after_logits, _ = logits_and_grads()  # the block restored transformers' own scan
    assert torch.equal(after_logits, own_logits)


def test_training_leaves_the_global_random_state_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    zoo_train.train(SHORT["quirky-rwkv4"], progress=False)
    assert torch.equal(torch.rand(3), expected)


class _ConstantLM(torch.nn.Module):
    """Logits that favour one token everywhere."""

    def __init__(self, vocab: int, token: int):
        super().__init__()
        self.vocab, self.token = vocab, token

    def forward(self, input_ids, use_cache=False):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token] = 1.0
        return type("Out", (), {"logits": logits})


def test_quirky_accuracy_scores_each_character_by_its_own_rule(fresh_seed):
    tokenizer = quirky_tokenizer()
    _, test = quirky.quirky_addition(50, 400, max_digits=2, seed=fresh_seed)
    false_id, true_id = zoo_train.answer_ids(tokenizer)
    for token, answer in ((false_id, False), (true_id, True)):
        m = zoo_train.quirky_accuracy(_ConstantLM(len(tokenizer), token), tokenizer, test)
        for character, rule in (("Alice", "alice_label"), ("Bob", "bob_label")):
            rows = [e for e in test if e.character == character]
            expected = sum(getattr(e, rule) == answer for e in rows) / len(rows)
            assert m[f"{character.lower()}_accuracy"] == pytest.approx(expected)


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab():
    stream = torch.randint(3, 259, (1000,))
    uniform = _ConstantLM(259, 0)
    uniform.forward = lambda input_ids, use_cache=False: type(
        "Out", (), {"logits": torch.zeros(*input_ids.shape, 259)}
    )
    assert zoo_train.bits_per_byte(uniform, stream, 64, 8) == pytest.approx(math.log2(259))


# --------------------------------------------------------------------------------- cache


def _changed(value):
    if isinstance(value, bool) or value is None:
        return 3
    if isinstance(value, int):
        return value + 2
    if isinstance(value, float):
        return value / 2 + 0.01
    if isinstance(value, tuple):
        return (value[0] / 2, *value[1:])
    return {"mamba": "rwkv4", "quirky": "text"}.get(value, value + "x")


def test_cache_key_changes_with_every_field(monkeypatch):
    recipe = SHORT["quirky-mamba"]
    key = cache.recipe_key(recipe)
    assert cache.recipe_key(dataclasses.replace(recipe)) == key
    for field in dataclasses.fields(Recipe):
        changed = dataclasses.replace(recipe, **{field.name: _changed(getattr(recipe, field.name))})
        assert cache.recipe_key(changed) != key, field.name
    monkeypatch.setattr(cache, "ZOO_FORMAT", cache.ZOO_FORMAT + 1)
    assert cache.recipe_key(recipe) != key


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    assert cache.cache_root() == tmp_path / "cache"
    monkeypatch.delenv("STATETAP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "statetap"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "statetap"


def test_entry_is_trained_once_then_loaded(train_calls, isolated_cache):
    recipe = SHORT["quirky-rwkv4"]
    folder = zoo.path(recipe)
    assert len(train_calls) == 1
    assert folder.parent == isolated_cache and folder == cache.entry_path(recipe)
    manifest = cache.read_manifest(folder)
    assert manifest["recipe"] == cache.recipe_fields(recipe)
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert not list(folder.glob("*.bin")) and not list(isolated_cache.glob(".*tmp*"))
    assert (
        zoo.metrics(recipe) == manifest["metrics"] == json.loads(json.dumps(train_calls[0].metrics))
    )
    zoo.load(recipe)
    assert len(train_calls) == 1


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: _flip_a_byte(f / "model.safetensors"),
        lambda f: (f / cache.MANIFEST).unlink(),  # a partial entry
        lambda f: (f / "tokenizer.json").unlink(),
        lambda f: (f / "stray.bin").write_bytes(b"x"),
        lambda f: (f / cache.MANIFEST).write_text("{"),
    ],
    ids=["flipped-weight-byte", "no-manifest", "missing-file", "unlisted-file", "bad-manifest"],
)
def test_bad_entry_is_retrained_never_loaded(damage, train_calls):
    recipe = SHORT["quirky-mamba"]
    folder = zoo.path(recipe)
    weights = (folder / "model.safetensors").read_bytes()
    damage(folder)
    with pytest.warns(UserWarning, match="bad cache entry"):
        model, _ = zoo.load(recipe)
    assert len(train_calls) == 2
    assert (folder / "model.safetensors").read_bytes() == weights  # deterministic retrain
    assert cache.problem(folder, recipe) is None
    reference = train_calls[0].model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zoo.load(recipe)
    assert len(train_calls) == 2


def test_failed_build_leaves_no_entry(monkeypatch, isolated_cache):
    def broken(recipe, progress=True):
        raise RuntimeError("boom")

    monkeypatch.setattr(zoo_train, "train", broken)
    with pytest.raises(RuntimeError, match="boom"):
        zoo.path(SHORT["quirky-mamba"])
    assert [p.name for p in isolated_cache.iterdir() if not p.name.endswith(".lock")] == []


# ------------------------------------------------------------------- from_pretrained


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_saved_folder_loads_with_transformers_and_reproduces_logits(name, train_calls):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = SHORT[name]
    folder = zoo.path(recipe)
    trained = train_calls[0]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model) is type(trained.model)
    if recipe.task == "quirky":
        texts = ["12 + 7 = 19. Alice:", "95 + 8 = 203. Bob:", "3 + 4 = 7. Bob:"]
    else:
        texts = ["def f(x):\n    return x", "The ``with`` statement"]
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        assert (
            ids.tolist()
            == trained.tokenizer(text, return_tensors="pt", add_special_tokens=False)[
                "input_ids"
            ].tolist()
        )
        with torch.no_grad():
            assert torch.equal(model(ids).logits, trained.model(ids).logits)
    via_zoo, _ = zoo.load(name + "-short")
    assert len(train_calls) == 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in via_zoo.state_dict().items())


def test_unknown_recipe_name_is_a_key_error():
    with pytest.raises(KeyError, match="quirky-mamba"):
        zoo.load("no-such-model")


def test_recipes_table():
    assert {"quirky-mamba", "quirky-rwkv4", "quirky-mamba2", "text-mamba", "text-rwkv4"} <= set(
        RECIPES
    )
    assert all(name == r.name for name, r in RECIPES.items())
    with pytest.raises(ValueError, match="arch"):
        dataclasses.replace(RECIPES["quirky-mamba"], arch="lstm")
