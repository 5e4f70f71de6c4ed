"""The RWKV "World" tokenizer (``rwkv_vocab_v20230424``) as a transformers tokenizer, offline.

Every RWKV World model (v5 Eagle, v6 Finch, v7 Goose) uses the same 65529-token byte vocabulary,
encoded by a greedy longest match over the UTF-8 bytes of the text: at each position the longest
vocabulary entry that the remaining bytes start with becomes the next token. Every single byte
is an entry (byte ``b`` has id ``b + 1``), so any text encodes, and decoding is exact
concatenation of the tokens' bytes. Id 0 is not in the file: it is the end-of-text token
(``"<s>"``, as in the HF ports), also used as padding. The models' embeddings have 65536 rows;
ids 65530..65535 name no token and are refused by ``decode``.

The vocabulary file ships inside BlinkDL's ``rwkv`` package; :func:`world_vocab_file` finds it
without importing that package, and ``save_pretrained`` writes it beside ``tokenizer_config.json``
so a saved folder loads with no ``rwkv`` installed.

File format, one entry per line: ``<id> <Python literal> <byte length>``, where the literal is a
``str`` (its UTF-8 bytes are the token) or a ``bytes`` (tokens that are not valid UTF-8 alone).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import tempfile
from pathlib import Path

from transformers import AddedToken, PreTrainedTokenizer

WORLD_VOCAB_NAME = "rwkv_vocab_v20230424.txt"
END_OF_TEXT = "<s>"


def world_vocab_file() -> Path:
    """Path of ``rwkv_vocab_v20230424.txt`` inside the installed ``rwkv`` package.

    Raises ``FileNotFoundError`` (saying how to get it) when the package is not installed.
    """
    spec = importlib.util.find_spec("rwkv")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the RWKV World vocabulary {WORLD_VOCAB_NAME} ships with BlinkDL's rwkv package, "
            "which is not installed: pip install rwkv, or pass vocab_file= explicitly"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WORLD_VOCAB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"the installed rwkv package has no {WORLD_VOCAB_NAME} at {path}")
    return path


def read_world_vocab(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a vocabulary file of the format above into ``{token bytes: id}``.

    Raises ``ValueError`` naming the line for a malformed entry, a byte length that disagrees
    with the token, a repeated token or id, or an id below 1.
    """
    vocab: dict[bytes, int] = {}
    seen_ids: set[int] = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            where = f"{path}:{number}"
            try:
                first, last = line.index(" "), line.rindex(" ")
                index, length = int(line[:first]), int(line[last + 1 :])
                literal = ast.literal_eval(line[first + 1 : last])
            except (ValueError, SyntaxError) as error:
                raise ValueError(
                    f"{where}: expected '<id> <str or bytes literal> <byte length>', got {line!r}"
                ) from error
            if isinstance(literal, str):
                literal = literal.encode("utf-8")
            if not isinstance(literal, bytes):
                raise ValueError(f"{where}: the token must be a str or bytes literal, got {line!r}")
            if len(literal) != length:
                raise ValueError(
                    f"{where}: token {literal!r} has {len(literal)} bytes, not {length}"
                )
            if index < 1 or index in seen_ids or literal in vocab:
                raise ValueError(f"{where}: id {index} or token {literal!r} is below 1 or repeated")
            vocab[literal] = index
            seen_ids.add(index)
    if not vocab:
        raise ValueError(f"{path} holds no vocabulary entries")
    missing = [byte for byte in range(256) if bytes([byte]) not in vocab]
    if missing:
        raise ValueError(
            f"{path} lacks the single-byte tokens {missing[:8]}...: not every text encodes"
        )
    return vocab


def write_world_vocab(vocab: dict[bytes, int], path: str | os.PathLike) -> None:
    """Write ``{token bytes: id}`` in the vocabulary file format, atomically (temp + rename)."""
    lines = []
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        try:
            literal = repr(token.decode("utf-8"))
        except UnicodeDecodeError:
            literal = repr(token)
        lines.append(f"{index} {literal} {len(token)}\n")
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".vocab-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.writelines(lines)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


class GreedyByteMatcher:
    """Greedy longest-match segmentation of bytes over a vocabulary.

    Keeps one dictionary from every prefix of every token to the token's id (``-1`` for a prefix
    that is not itself a token): extending a match one byte at a time stops at the first
    extension that no token starts with, so finding one token costs its length in lookups.
    """

    def __init__(self, vocab: dict[bytes, int]):
        self.prefixes: dict[bytes, int] = {}
        for token in vocab:
            for end in range(1, len(token)):
                self.prefixes.setdefault(token[:end], -1)
        self.prefixes.update(vocab)

    def split(self, data: bytes) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` byte spans of the tokens that cover ``data``, in order."""
        spans = []
        start, size = 0, len(data)
        while start < size:
            best, end = 0, start + 1
            while end <= size:
                found = self.prefixes.get(data[start:end])
                if found is None:
                    break
                if found >= 0:
                    best = end
                end += 1
            if best == 0:
                raise ValueError(f"byte {data[start]:#04x} at {start} is not in the vocabulary")
            spans.append((start, best))
            start = best
        return spans


class RwkvWorldTokenizer(PreTrainedTokenizer):
    """The RWKV World tokenizer: 65529 byte tokens (ids 1..65529) plus ``"<s>"`` (id 0).

    ``tokenizer(text)["input_ids"]`` equals BlinkDL's ``TRIE_TOKENIZER(...).encode(text)`` for
    every text (no BOS is added, as in BlinkDL's pipeline). Tokens are shown as their bytes read
    as Latin-1 (one character per byte), so ``convert_ids_to_tokens`` is lossless even for
    tokens that are parts of a UTF-8 character; ``decode`` joins the bytes and reads them as
    UTF-8 (``errors`` chooses what an incomplete character becomes, ``"replace"`` by default).

    By default ``"<s>"`` written in a text is encoded as the three bytes it is, like BlinkDL's
    tokenizer; pass ``split_special_tokens=False`` to make it id 0.

    Args:
        vocab_file: the vocabulary file (default: the one inside the installed ``rwkv`` package).
        errors: how ``decode`` treats bytes that are not UTF-8 (``bytes.decode``'s argument).
    """

    vocab_files_names = {"vocab_file": WORLD_VOCAB_NAME}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str | None = None, errors: str = "replace", **kwargs):
        path = Path(vocab_file) if vocab_file is not None else world_vocab_file()
        self.vocab_file = str(path)
        self.errors = errors
        self.byte_vocab = read_world_vocab(path)
        self.id_to_bytes = {index: token for token, index in self.byte_vocab.items()}
        self.matcher = GreedyByteMatcher(self.byte_vocab)
        self.encoder = {token.decode("latin-1"): index for token, index in self.byte_vocab.items()}
        if 0 in self.id_to_bytes:
            raise ValueError(f"{path}: id 0 is reserved for {END_OF_TEXT!r}, the file uses it")
        self._added_tokens_decoder = {0: AddedToken(END_OF_TEXT, special=True, normalized=False)}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            kwargs.setdefault(name, END_OF_TEXT)
        kwargs.setdefault("split_special_tokens", True)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(errors=errors, **kwargs)

    @property
    def vocab_size(self) -> int:
        """Ids the vocabulary defines: 65530 (0..65529) for the World vocabulary."""
        return max(self.id_to_bytes) + 1

    def get_vocab(self) -> dict[str, int]:
        vocab = {END_OF_TEXT: 0, **self.encoder}
        vocab.update(self._added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        data = text.encode("utf-8")
        return [data[start:end].decode("latin-1") for start, end in self.matcher.split(data)]

    def _convert_token_to_id(self, token: str) -> int:
        index = self.encoder.get(token)
        if index is None:
            raise ValueError(f"token {token!r} is not in the RWKV World vocabulary")
        return index

    def _convert_id_to_token(self, index: int) -> str:
        token = self.id_to_bytes.get(index)
        if token is None:
            raise ValueError(
                f"token id {index} names no token: the RWKV World vocabulary has ids "
                f"0..{self.vocab_size - 1}"
            )
        return token.decode("latin-1")

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids of raw ``data`` (any bytes, valid UTF-8 or not); no special tokens."""
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        return [self.byte_vocab[data[start:end]] for start, end in self.matcher.split(data)]

    def token_bytes(self, token: str) -> bytes:
        """The bytes a token string stands for (added tokens as their UTF-8 text)."""
        if token in self._added_tokens_encoder:
            return token.encode("utf-8")
        return token.encode("latin-1")

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return b"".join(self.token_bytes(token) for token in tokens).decode("utf-8", self.errors)

    def decode_bytes(self, ids: list[int], skip_special_tokens: bool = False) -> bytes:
        """The exact bytes of ``ids`` (no UTF-8 decoding), e.g. for streaming partial characters."""
        tokens = self.convert_ids_to_tokens(list(ids), skip_special_tokens=skip_special_tokens)
        return b"".join(self.token_bytes(token) for token in tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple:
        if not os.path.isdir(save_directory):
            raise ValueError(f"save_directory must be an existing folder, got {save_directory!r}")
        name = f"{filename_prefix}-{WORLD_VOCAB_NAME}" if filename_prefix else WORLD_VOCAB_NAME
        path = os.path.join(save_directory, name)
        write_world_vocab(self.byte_vocab, path)
        return (path,)


def world_tokenizer(vocab_file: str | os.PathLike | None = None) -> RwkvWorldTokenizer:
    """The World tokenizer read from ``vocab_file`` (default: the installed ``rwkv`` package's)."""
    return RwkvWorldTokenizer(vocab_file=None if vocab_file is None else str(vocab_file))
