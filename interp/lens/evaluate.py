"""Per-layer evaluation of lenses on held-out text, and the final-layer check.

For every layer and lens, over the next-token predictions of held-out windows:

* cross-entropy of the next token, in nats per token and in bits per byte
  (``nats / ln 2 / bytes_per_token``; a byte-level tokenizer has 1 byte per token);
* KL(p_final || p_lens) in nats, ``p_final`` the model's own distribution;
* the entropy of the lens's distribution, in nats.

Windows are consecutive: window ``i`` holds tokens ``i * seq_len .. (i + 1) * seq_len``
(``seq_len + 1`` tokens, the last one only as a target), as ``statetap.zoo`` scores its text
models, so the model's own figure here equals the zoo's ``bits_per_byte`` on the same windows.

The final-layer check: the lens at the last layer must reproduce the model's logits, since its
residual is exactly what the final norm reads. ``final_layer_error`` is the largest absolute
difference between the two (float32 logits of the same pass); anything above
:data:`FINAL_LAYER_TOLERANCE` means the lens does not read the model's real last
representation (the fault in the paper's Mamba runs).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from statetap.extract import write_json_atomically
from statetap.interp.lens.data import check_stream, windows
from statetap.interp.lens.lens import LogitLens, TunedLens
from statetap.interp.lens.train import kl_to_final

FINAL_LAYER_TOLERANCE = 1e-6


@dataclass
class LensEvaluation:
    """Per-layer figures of one or more lenses of one model (means over ``tokens`` tokens).

    Attributes:
        lenses: lens names (``"tuned"``, ``"logit"``), the first axis of every table.
        cross_entropy, kl, entropy: ``[lenses][layers]`` nats (per token).
        model_cross_entropy: the model's own next-token cross-entropy, nats per token.
        bytes_per_token: text bytes per token of the evaluated stream.
        tokens: next-token predictions scored.
        final_layer_error: max |lens logits - model logits| at the last layer, over all lenses.
        meta: facts about the run (model, data), JSON-ready.
    """

    lenses: list[str]
    cross_entropy: list[list[float]]
    kl: list[list[float]]
    entropy: list[list[float]]
    model_cross_entropy: float
    bytes_per_token: float
    tokens: int
    final_layer_error: float
    meta: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.cross_entropy[0])

    @property
    def bits_per_byte(self) -> list[list[float]]:
        """``[lenses][layers]`` cross-entropy in bits per byte."""
        return [[self._bpb(x) for x in row] for row in self.cross_entropy]

    @property
    def model_bits_per_byte(self) -> float:
        return self._bpb(self.model_cross_entropy)

    @property
    def final_layer_ok(self) -> bool:
        """The final-layer check passed (error at most :data:`FINAL_LAYER_TOLERANCE`)."""
        return self.final_layer_error <= FINAL_LAYER_TOLERANCE

    def _bpb(self, nats: float) -> float:
        return nats / math.log(2) / self.bytes_per_token

    def as_dicts(self) -> list[dict]:
        """One row per (lens, layer): ``lens, layer, cross_entropy_nats, bits_per_byte,
        kl_nats, entropy_nats``."""
        bpb = self.bits_per_byte
        return [
            dict(
                lens=name,
                layer=layer,
                cross_entropy_nats=self.cross_entropy[i][layer],
                bits_per_byte=bpb[i][layer],
                kl_nats=self.kl[i][layer],
                entropy_nats=self.entropy[i][layer],
            )
            for i, name in enumerate(self.lenses)
            for layer in range(self.n_layers)
        ]

    def markdown(self) -> str:
        """The per-layer table and the final-layer check, as markdown."""
        check = "passed" if self.final_layer_ok else "FAILED"
        lines = [
            "| lens | layer | CE (nats/token) | bits/byte | KL to final (nats) | entropy (nats) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in self.as_dicts():
            lines.append(
                f"| {row['lens']} | {row['layer']} | {row['cross_entropy_nats']:.4f} "
                f"| {row['bits_per_byte']:.4f} | {row['kl_nats']:.4f} | {row['entropy_nats']:.4f} |"
            )
        lines += [
            "",
            f"Model: {self.model_cross_entropy:.4f} nats/token, {self.model_bits_per_byte:.4f} "
            f"bits/byte over {self.tokens} tokens ({self.bytes_per_token:g} bytes/token). "
            f"Final-layer check {check}: the lens at the last layer differs from the model's "
            f"logits by at most {self.final_layer_error:.3g} "
            f"(tolerance {FINAL_LAYER_TOLERANCE:g}).",
        ]
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Write the evaluation as JSON to ``path`` (atomically)."""
        return write_json_atomically(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> LensEvaluation:
        """An evaluation written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


@torch.no_grad()
def evaluate(
    lens: LogitLens,
    stream: torch.Tensor,
    seq_len: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 8,
    bytes_per_token: float = 1.0,
    progress: bool = False,
) -> LensEvaluation:
    """Score ``lens`` (and, for a :class:`TunedLens`, the logit lens of the same model beside
    it) on ``stream`` ``[T]``.

    Args:
        seq_len: predictions per window.
        max_windows: score at most this many consecutive windows (default: all that fit).
        batch_size: windows per forward pass.
        bytes_per_token: text bytes per token of ``stream`` (see
            :func:`statetap.interp.lens.data.token_stream`).
    """
    if not isinstance(lens, LogitLens):
        raise TypeError(f"lens must be a LogitLens or TunedLens, got {type(lens).__name__}")
    stream = check_stream(stream)
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if max_windows is not None and (not isinstance(max_windows, int) or max_windows < 1):
        raise ValueError(f"max_windows must be a positive int or None, got {max_windows!r}")
    if not isinstance(bytes_per_token, (int, float)) or not bytes_per_token > 0:
        raise ValueError(f"bytes_per_token must be a positive number, got {bytes_per_token!r}")
    data = windows(stream, seq_len + 1, stride=seq_len)[:max_windows]
    lenses = [lens, LogitLens(lens.model)] if isinstance(lens, TunedLens) else [lens]
    shape = (len(lenses), lens.n_layers)
    sums = {key: torch.zeros(shape, dtype=torch.float64) for key in ("ce", "kl", "entropy")}
    model_ce, error = 0.0, 0.0
    device = lens.tap.device
    for batch in tqdm(data.split(batch_size), desc="lens eval", disable=not progress):
        batch = batch.to(device)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        hidden, final = lens.residuals(inputs)
        final_log_probs = final.log_softmax(-1)
        model_ce += _cross_entropy(final_log_probs, targets)
        for i, each in enumerate(lenses):
            for layer in range(lens.n_layers):
                log_probs = each(hidden[layer], layer).log_softmax(-1)
                sums["ce"][i, layer] += _cross_entropy(log_probs, targets)
                sums["kl"][i, layer] += kl_to_final(log_probs, final_log_probs).item()
                sums["entropy"][i, layer] += -(log_probs.exp() * log_probs).sum().item()
            last = each(hidden[-1], -1)
            error = max(error, (last - final).abs().max().item())
    tokens = data.shape[0] * seq_len
    means = {key: (value / tokens).tolist() for key, value in sums.items()}
    return LensEvaluation(
        lenses=[each.name for each in lenses],
        cross_entropy=means["ce"],
        kl=means["kl"],
        entropy=means["entropy"],
        model_cross_entropy=model_ce / tokens,
        bytes_per_token=float(bytes_per_token),
        tokens=tokens,
        final_layer_error=error,
    )


def _cross_entropy(log_probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed next-token cross-entropy (nats) of ``log_probs`` ``[B, L, V]`` at ``targets``."""
    return F.nll_loss(log_probs.flatten(0, 1), targets.flatten(), reduction="sum").item()
