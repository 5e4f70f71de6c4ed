"""The RWKV World tokenizer against BlinkDL's own (``rwkv.rwkv_tokenizer.TRIE_TOKENIZER``), on
fresh random text and bytes: the same ids, exact round trips, save/load, refusals."""

from __future__ import annotations

import random

import pytest

from statetap.models.world_tokenizer import (
    RwkvWorldTokenizer,
    read_world_vocab,
    world_tokenizer,
    world_vocab_file,
)

# code point ranges a real corpus mixes: ASCII, controls, Latin-1, Cyrillic, CJK, Hangul, emoji,
# combining marks, and the private and supplementary planes
RANGES = [
    (0x00, 0x7F),
    (0x80, 0xFF),
    (0x400, 0x4FF),
    (0x300, 0x36F),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3),
    (0x1F300, 0x1FAFF),
    (0xE000, 0xF8FF),
    (0x10000, 0x10FFFF),
]
PIECES = [" ", "  ", "\n", "\n\n", "\t", " the", "ing", "User:", "Assistant:", "<s>", "def "]


def random_text(rng: random.Random, length: int) -> str:
    """Text of ``length`` pieces: common words and whitespace runs (where long tokens live)
    mixed with random code points; no surrogates (they have no UTF-8)."""
    out = []
    for _ in range(length):
        if rng.random() < 0.4:
            out.append(rng.choice(PIECES))
            continue
        low, high = rng.choice(RANGES)
        code = rng.randint(low, high)
        out.append(chr(code) if not 0xD800 <= code <= 0xDFFF else "x")
    return "".join(out)


@pytest.fixture(scope="module")
def tokenizer() -> RwkvWorldTokenizer:
    return world_tokenizer()


@pytest.fixture(scope="module")
def blinkdl():
    trie = pytest.importorskip("rwkv.rwkv_tokenizer")
    return trie.TRIE_TOKENIZER(str(world_vocab_file()))


SAMPLES = [
    "",
    "Hello, world!",
    "User: What is the capital of France?\n\nAssistant: Paris.\n\n",
    "def f(x):\n    return x ** 2  # square\n",
    "################################################################################ end",
    " " * 300 + "x",
    "naïve café — “quotes” … 日本語のテキスト 한국어 😀🎉 Ελληνικά",
    "<s> written in text stays bytes",
    "\x00\x01\x7f\x80",
]


@pytest.mark.parametrize("text", SAMPLES, ids=range(len(SAMPLES)))
def test_ids_equal_blinkdl_on_samples(tokenizer, blinkdl, text):
    ids = tokenizer(text)["input_ids"]
    assert ids == blinkdl.encode(text)
    assert tokenizer.decode(ids) == text


def test_ids_equal_blinkdl_on_random_text(tokenizer, blinkdl, fresh_seed):
    rng = random.Random(fresh_seed)
    for _ in range(40):
        text = random_text(rng, rng.randint(1, 200))
        ids = tokenizer.encode(text)
        assert ids == blinkdl.encode(text), text
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode_bytes(ids) == text.encode("utf-8")


def test_arbitrary_bytes_round_trip_and_equal_blinkdl(tokenizer, blinkdl, fresh_seed):
    rng = random.Random(fresh_seed)
    for _ in range(40):
        # biased towards printable ASCII so multi-byte tokens occur, plus any byte at all
        data = bytes(
            rng.randint(0x20, 0x7E) if rng.random() < 0.6 else rng.randint(0, 255)
            for _ in range(rng.randint(1, 150))
        )
        ids = tokenizer.encode_bytes(data)
        assert ids == blinkdl.encodeBytes(data)
        assert tokenizer.decode_bytes(ids) == data
        assert tokenizer.decode(ids) == data.decode("utf-8", "replace")


def test_batch_padding_uses_id_zero(tokenizer, blinkdl):
    texts = ["a short one", "a longer text of several more tokens"]
    batch = tokenizer(texts, padding=True, padding_side="left")
    longest = max(len(blinkdl.encode(t)) for t in texts)
    for row, mask, text in zip(batch["input_ids"], batch["attention_mask"], texts):
        expected = blinkdl.encode(text)
        pad = longest - len(expected)
        assert row == [0] * pad + expected
        assert mask == [0] * pad + [1] * len(expected)


def test_special_token_only_on_request(tokenizer):
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == tokenizer.bos_token_id == 0
    assert 0 not in tokenizer.encode("<s>")
    assert tokenizer.encode("a<s>b", split_special_tokens=False) == [
        *tokenizer.encode("a"),
        0,
        *tokenizer.encode("b"),
    ]
    assert tokenizer.decode([0]) == "<s>"
    assert tokenizer.decode([*tokenizer.encode("hi"), 0], skip_special_tokens=True) == "hi"


def test_save_and_load_back(tokenizer, tmp_path, fresh_seed):
    tokenizer.save_pretrained(tmp_path)
    assert read_world_vocab(tmp_path / "rwkv_vocab_v20230424.txt") == tokenizer.byte_vocab
    loaded = RwkvWorldTokenizer.from_pretrained(tmp_path)
    text = random_text(random.Random(fresh_seed), 120)
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.vocab_file != tokenizer.vocab_file


def test_vocabulary_size_and_tokens(tokenizer):
    assert tokenizer.vocab_size == 65530
    assert len(tokenizer) == 65530
    assert tokenizer.convert_ids_to_tokens([1, 257]) == ["\x00", "\t\t"]
    assert tokenizer.encode_bytes(b"\xff") == [256]


def test_unknown_ids_are_refused(tokenizer):
    with pytest.raises(ValueError, match="token id 65533 names no token"):
        tokenizer.decode([5, 65533])
    with pytest.raises(TypeError, match="data must be bytes"):
        tokenizer.encode_bytes("text")


@pytest.mark.parametrize(
    "line, message",
    [
        ("1 'a' 2\n", "has 1 bytes, not 2"),
        ("1 'a 1\n", "expected '<id> <str or bytes literal> <byte length>'"),
        ("1 7 1\n", "must be a str or bytes literal"),
        ("0 'a' 1\n", "below 1 or repeated"),
    ],
)
def test_malformed_vocabulary_is_refused(tmp_path, line, message):
    path = tmp_path / "vocab.txt"
    path.write_text(line, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_world_vocab(path)


def test_vocabulary_without_every_byte_is_refused(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("".join(f"{b + 1} {bytes([b])!r} 1\n" for b in range(200)), encoding="utf-8")
    with pytest.raises(ValueError, match="lacks the single-byte tokens"):
        read_world_vocab(path)
