"""Token streams for the lens: texts to one stream, streams to windows, the zoo's corpus.

Training and evaluation read one token stream ``[T]`` (int64): the caller's, or the
byte-level zoo corpus (``statetap.zoo.corpus``: training documents for training, held-out
documents for evaluation). Bits per byte divide by the stream's bytes per token, which
:func:`token_stream` measures (exactly 1 for a byte-level tokenizer, counting a document's
end-of-sequence token as one byte, as the zoo does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def check_stream(stream: object, name: str = "stream") -> torch.Tensor:
    """``stream`` if it is a 1-D integer tensor, else TypeError/ValueError naming ``name``."""
    if not isinstance(stream, torch.Tensor):
        raise TypeError(
            f"{name} must be a 1-D LongTensor of token ids, got {type(stream).__name__}"
        )
    if stream.is_floating_point() or stream.is_complex() or stream.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got {stream.dtype}")
    if stream.dim() != 1:
        raise ValueError(f"{name} must be 1-D [T], got shape {list(stream.shape)}")
    return stream.long()


def windows(stream: torch.Tensor, length: int, stride: int | None = None) -> torch.Tensor:
    """The windows ``[N, length]`` of ``stream`` ``[T]`` starting every ``stride`` tokens
    (default ``length``: consecutive, no overlap); a short tail is dropped.

    Raises:
        ValueError: ``stream`` is shorter than one window.
    """
    stream = check_stream(stream)
    stride = length if stride is None else stride
    if len(stream) < length:
        raise ValueError(f"a stream of {len(stream)} tokens is shorter than one window ({length})")
    return stream.unfold(0, length, stride)


def step_windows(n: int, per_step: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless indices ``[per_step]`` of each step's windows among ``n``: consecutive slices of
    shuffled epochs (each index once per epoch; a step may run across an epoch boundary),
    drawn from a private generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    pending = torch.zeros(0, dtype=torch.long)
    while True:
        while len(pending) < per_step:
            pending = torch.cat([pending, torch.randperm(n, generator=generator)])
        yield pending[:per_step]
        pending = pending[per_step:]


def token_stream(tokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, float]:
    """One stream ``[T]`` of ``texts``, each tokenized without special tokens and followed by
    the tokenizer's end-of-sequence token (if it has one), and its bytes per token (UTF-8 bytes
    of the texts, plus one per end-of-sequence token, over ``T``)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    eos = tokenizer.eos_token_id
    pieces: list[torch.Tensor] = []
    n_bytes = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces.append(torch.tensor(ids + ([] if eos is None else [eos]), dtype=torch.long))
        n_bytes += len(text.encode("utf-8")) + (eos is not None)
    stream = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
    if len(stream) == 0:
        raise ValueError("the texts give no tokens")
    return stream, n_bytes / len(stream)


def zoo_corpus(recipe=None, tokenizer=None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The zoo's text corpus split as ``recipe`` (a zoo text recipe or its name; default
    ``text-mamba``) split it, so a zoo text model is evaluated on documents it never trained
    on.

    Returns:
        The training stream, the held-out stream and the held-out stream's bytes per token:
        the zoo's byte ids (1 byte per token) without ``tokenizer``, else ``tokenizer``'s
        tokens (:func:`token_stream`).
    """
    from statetap import zoo
    from statetap.zoo import corpus

    recipe = zoo.resolve(recipe or "text-mamba")
    if recipe.task != "text":
        raise ValueError(f"zoo recipe {recipe.name!r} is not a text recipe")
    train, held_out = corpus.split(
        corpus.documents(recipe.stdlib_files), recipe.held_out, recipe.seed
    )
    if tokenizer is None:
        return corpus.encode(train), corpus.encode(held_out), 1.0
    held_out_stream, bytes_per_token = token_stream(tokenizer, held_out)
    return token_stream(tokenizer, train)[0], held_out_stream, bytes_per_token
