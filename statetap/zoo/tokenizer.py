"""Tokenizers of the zoo models; both are saved with the weights and load back with
``AutoTokenizer.from_pretrained(folder)``.

- The quirky task: a word-level vocabulary in which every digit, the pieces ``" + "``,
  ``" = "``, ``". "``, ``":"``, the names ``"Alice"`` and ``"Bob"``, and the answers ``" True"``
  and ``" False"`` are one token each, so a prompt's answer is a single next-token logit at its
  last position.
- The text LM: transformers' byte-level ``ByT5Tokenizer`` (3 special ids, then one id per byte).
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import ByT5Tokenizer, PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
QUIRKY_PIECES = (" + ", " = ", ". ", ":", "Alice", "Bob", " True", " False")
QUIRKY_VOCAB = (PAD, EOS, UNK, *"0123456789", *QUIRKY_PIECES)


def quirky_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer of the quirky task (``len(QUIRKY_VOCAB)`` = 21 ids).

    Text is cut into the pieces of ``QUIRKY_VOCAB`` (each digit alone); anything else becomes
    ``<unk>``. Decoding concatenates, so ``decode(encode(prompt)) == prompt``.
    """
    vocab = {piece: i for i, piece in enumerate(QUIRKY_VOCAB)}
    pattern = "|".join(sorted((_escape(p) for p in QUIRKY_PIECES), key=len, reverse=True) + [r"\d"])
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="right"
    )


def byte_tokenizer() -> ByT5Tokenizer:
    """transformers' byte-level tokenizer without extra ids: pad 0, eos 1, unk 2, byte ``x`` is
    ``x + 3`` (259 ids)."""
    return ByT5Tokenizer(extra_ids=0)


def _escape(piece: str) -> str:
    return "".join("\\" + c if c in r".+*?()[]{}|^$\\" else c for c in piece)
