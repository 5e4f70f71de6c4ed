"""What an extraction is asked for: :class:`ExtractConfig` and the positions it names.

Positions are either *fixed* (a list of ints, the same slots in every text: tensors
``[rows, P, *shape]``) or a *span* of each text's tokens (``"all"``, ``"start:stop"``: a
ragged layout, one flat ``[tokens, *shape]`` tensor per site with row offsets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from statetap.sites import COMMON_SITES, STATE_GROUP

#: the dtypes a shard may store, by their torch names (:attr:`ExtractConfig.torch_dtype`)
DTYPES = ("float32", "float16", "bfloat16")
SHORT_TEXTS = ("skip", "error")


@dataclass(frozen=True)
class Span:
    """Tokens ``start .. stop - 1`` of each text (``stop`` None: to the text's end); a text
    shorter than ``stop`` contributes what it has, one shorter than ``start + 1`` nothing."""

    start: int = 0
    stop: int | None = None

    def __str__(self) -> str:
        return "all" if self == Span() else f"{self.start}:{'' if self.stop is None else self.stop}"


def parse_positions(spec: object) -> list[int] | Span:
    """A list of ints (fixed slots, negative from each text's end), or a :class:`Span` from
    ``"all"`` / ``"start:stop"`` (``start`` and ``stop`` non-negative, either may be empty).

    Raises:
        ValueError / TypeError: anything else, naming what is accepted.
    """
    if isinstance(spec, str):
        if spec == "all":
            return Span()
        start, colon, stop = spec.partition(":")
        try:
            span = Span(int(start) if start else 0, int(stop) if stop else None)
        except ValueError:
            span = None
        if not colon or span is None or span.start < 0 or (span.stop or 1) <= span.start:
            raise ValueError(
                f"positions must be ints, 'all' or a span 'start:stop' with "
                f"0 <= start < stop, got {spec!r}"
            )
        return span
    if isinstance(spec, Span):
        return spec
    if (
        isinstance(spec, Sequence)
        and spec
        and all(isinstance(p, int) and not isinstance(p, bool) for p in spec)
    ):
        return list(spec)
    raise TypeError(
        f"positions must be a non-empty list of ints, 'all' or 'start:stop', got {spec!r}"
    )


@dataclass
class ExtractConfig:
    """What to extract, from which texts, and where to write it.

    Attributes:
        out: output folder (created). Running again on the same folder resumes after the
            last complete shard; a different config or input there is refused.
        sites: site names, or ``"state"`` for every state component.
        layers: layer indices (negative from the last), or None for all.
        positions: a list of ints (fixed slots, ``[rows, P, *shape]``), or ``"all"`` /
            ``"start:stop"`` (token spans, stored ragged: ``[tokens, *shape]`` plus offsets).
        batch_size: at most this many texts per forward pass.
        max_tokens: at most this many padded tokens (rows x longest row) per forward pass, or
            None for no budget; at least ``max_length``, so that every text fits.
        max_length: texts are cut to this many tokens (counted in the manifest, with a
            warning).
        short_texts: what to do with a text too short for the fixed positions (``[0, -2]``
            needs 2 tokens): ``"skip"`` leaves it out like an empty text (listed per shard and
            counted as ``short_texts`` in the manifest, with a warning); ``"error"`` stops the
            run at the first one (the finished shards are kept).
        shard_rows: input rows per shard; also the window inside which texts are sorted by
            length before batching (results do not depend on it).
        dtype: dtype of the stored tensors.
        logits: also store the logits at the positions (``"logits"``); without it the forward
            stops after the last requested layer and computes no logits.
        progress: show a progress bar (texts, tokens/s, ETA) on rank 0.
        max_bytes: refuse to start when the output is estimated above this many bytes
            (:mod:`~statetap.extract.size`), or None for no budget.

    ``batch_size``, ``max_tokens``, ``short_texts``, ``progress`` and ``max_bytes`` change how
    the work is done, not what is stored, so a resumed run may change them (after running out
    of memory, say); each shard records the batching it was made with.
    """

    out: Path
    sites: Sequence[str] = ("residual", STATE_GROUP)
    layers: Sequence[int] | None = None
    positions: Sequence[int] | str = (-1,)
    batch_size: int = 16
    max_tokens: int | None = None
    max_length: int = 256
    shard_rows: int = 1024
    dtype: str = "float32"
    logits: bool = False
    progress: bool = True
    short_texts: str = "skip"
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("batch_size", "max_length", "shard_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or self.max_tokens < self.max_length
        ):
            raise ValueError(
                f"max_tokens must be an int >= max_length={self.max_length} (so that every "
                f"text fits in a batch), got {self.max_tokens!r}"
            )
        if isinstance(self.sites, str) or not self.sites:
            raise ValueError(f"sites must be a non-empty list of site names, got {self.sites!r}")
        if self.short_texts not in SHORT_TEXTS:
            raise ValueError(f"short_texts must be one of {SHORT_TEXTS}, got {self.short_texts!r}")
        if self.max_bytes is not None and (
            not isinstance(self.max_bytes, int)
            or isinstance(self.max_bytes, bool)
            or self.max_bytes < 1
        ):
            raise ValueError(f"max_bytes must be a positive int or None, got {self.max_bytes!r}")
        self.positions = parse_positions(self.positions)
        if self.min_tokens > self.max_length:
            raise ValueError(
                f"positions {self.positions} need texts of at least {self.min_tokens} tokens, "
                f"but max_length={self.max_length} cuts every text shorter"
            )
        states = [site for site in self.sites if site not in COMMON_SITES]
        if self.span is not None and self.span.stop is None and states:
            raise ValueError(
                f"positions={str(self.positions)!r} is for the residual and mixer sites (as in "
                f"Tap.run); the state sites {states} take explicit positions or a span with an "
                f"end, such as '{self.span.start}:{self.max_length}' (a state at every token is "
                "large: the size is estimated before the first batch)"
            )

    @property
    def torch_dtype(self):
        """The storage dtype as a ``torch.dtype`` (torch is imported here, not with the module:
        the command line checks a config before it loads torch)."""
        import torch

        return getattr(torch, self.dtype)

    @property
    def span(self) -> Span | None:
        """The token span of a ragged extraction; None for fixed positions."""
        return self.positions if isinstance(self.positions, Span) else None

    @property
    def min_tokens(self) -> int:
        """Tokens a text needs to be stored: enough for every fixed position (``[0, -3]``: 3),
        or 1 for a span."""
        if self.span is not None:
            return 1
        return max(max(p + 1 if p >= 0 else -p for p in self.positions), 1)

    def record(self) -> dict:
        """The settings that decide the stored tensors, as the manifest keeps them (a resumed
        run must match them; the batching, ``short_texts``, ``progress`` and ``max_bytes`` do
        not count: see the class docstring)."""
        return {
            "sites": list(self.sites),
            "positions": str(self.positions) if self.span else list(self.positions),
            "max_length": self.max_length,
            "shard_rows": self.shard_rows,
            "dtype": self.dtype,
            "logits": self.logits,
        }
