"""Texts to forward passes: tokenised, cut at ``max_length``, sorted by length inside a
window and grouped into batches under a row count and a padded-token budget.

Rows are padded on the right: in a causal model the pads after a text change nothing before
them, and transformers' RWKV-4 (which ignores ``attention_mask``) accepts no other padding.
Each batch keeps the input index of its rows, so the results go back into input order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Tokenized:
    """A window of texts as token ids: ``rows`` (input indices) and ``ids`` of the texts that
    are stored (cut at ``max_length``), the number ``truncated`` (texts longer than that), and
    the input indices of the texts left out: ``empty`` (no tokens) and ``short`` (fewer tokens
    than the positions need)."""

    rows: list[int]
    ids: list[list[int]]
    truncated: int
    empty: list[int]
    short: list[int]

    @property
    def tokens(self) -> int:
        return sum(len(row) for row in self.ids)


@dataclass
class Batch:
    """One forward pass: ``rows`` ``[B]`` input indices, ``input_ids`` / ``attention_mask``
    ``[B, L]`` (right-padded) and ``lengths`` ``[B]`` real tokens per row."""

    rows: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor


def tokenize(
    tokenizer,
    rows: Sequence[int],
    texts: Sequence[str],
    max_length: int,
    min_tokens: int = 1,
    short_texts: str = "skip",
) -> Tokenized:
    """Token ids of ``texts`` (no special tokens added), each cut to ``max_length``; texts with
    no tokens, or fewer than ``min_tokens``, are left out (``short_texts="skip"``) or refused
    (``"error"``).

    Raises:
        ValueError: with ``short_texts="error"``, a text shorter than ``min_tokens``, naming its
            input row and the ways on.
    """
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    empty = [row for row, ids in zip(rows, encoded) if not ids]
    short = [row for row, ids in zip(rows, encoded) if 0 < len(ids) < min_tokens]
    if short and short_texts == "error":
        raise ValueError(
            f"the positions need texts of at least {min_tokens} tokens, but input rows {short} "
            "have fewer; short_texts='skip' (--short-texts skip) leaves such texts out and "
            f"counts them, and a span ('0:{min_tokens}') keeps what each text has"
        )
    kept = [(row, ids) for row, ids in zip(rows, encoded) if len(ids) >= max(min_tokens, 1)]
    return Tokenized(
        rows=[row for row, _ in kept],
        ids=[ids[:max_length] for _, ids in kept],
        truncated=sum(len(ids) > max_length for ids in encoded),
        empty=empty,
        short=short,
    )


def length_buckets(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None
) -> list[list[int]]:
    """Indices into ``lengths`` grouped into batches: longest first (ties in input order),
    each batch at most ``batch_size`` rows and, with ``max_tokens``, at most that many padded
    tokens (rows x its longest row)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        fits = (
            current is not None
            and len(current) < batch_size
            and (max_tokens is None or (len(current) + 1) * lengths[current[0]] <= max_tokens)
        )
        if fits:
            current.append(index)
        else:
            batches.append([index])
    return batches


def batches(
    window: Tokenized, batch_size: int, max_tokens: int | None, pad_id: int, device: torch.device
) -> Iterator[Batch]:
    """The window's forward passes, from :func:`length_buckets`."""
    lengths = [len(ids) for ids in window.ids]
    for group in length_buckets(lengths, batch_size, max_tokens):
        width = lengths[group[0]]
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for slot, index in enumerate(group):
            ids[slot, : lengths[index]] = torch.tensor(window.ids[index])
            mask[slot, : lengths[index]] = 1
        yield Batch(
            rows=torch.tensor([window.rows[i] for i in group]),
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            lengths=torch.tensor([lengths[i] for i in group]),
        )


def pad_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its end-of-text token, else 0 (pads
    sit after the text and are masked, so their id changes nothing)."""
    for token in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    return 0
