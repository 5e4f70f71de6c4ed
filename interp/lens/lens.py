"""The logit lens and the tuned lens of a recurrent LM, and the tuned lens on disk.

A lens reads the residual stream after block ``l`` (the Tap's ``"residual"`` site at layer
``l``: the input of the next block, of the final norm after the last block) and decodes it
with the model's own final norm and output embedding:

* :class:`LogitLens`: ``logits_l = unembed(final_norm(h_l))`` (nostalgebraist's logit lens);
* :class:`TunedLens`: ``logits_l = unembed(final_norm(h_l + W_l h_l + b_l))`` with one affine
  translator per layer, ``W_l`` and ``b_l`` zero at initialisation (so an untrained tuned lens
  *is* the logit lens, exactly). The last layer has no translator: its residual is what the
  final norm reads, so both lenses there give the model's own logits (the final-layer check).

The model is frozen and is not part of the lens's parameters or state; a lens holds a
:class:`statetap.Tap` on it. Translators are float32 whatever the model's dtype.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

import statetap
from statetap.interp.provenance import check_same, model_identity
from statetap.interp.tensor_files import read_tensors, require_files, write_pair

TRANSLATORS = "translators.safetensors"
CONFIG = "config.json"
KIND = "statetap-tuned-lens"
DIGEST = "translators_sha256"  # the config's key for the translators file's sha256


class LogitLens(nn.Module):
    """The logit lens of ``model`` (any model in ``statetap.adapters.ADAPTERS``).

    Example:
        >>> import torch
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> from statetap.interp.lens import LogitLens
        >>> model = MambaForCausalLM(MambaConfig(vocab_size=50, hidden_size=16,
        ...                                      num_hidden_layers=3, state_size=4)).eval()
        >>> lens = LogitLens(model)
        >>> hidden, logits = lens.residuals(torch.randint(0, 50, (2, 7)))
        >>> hidden.shape, lens(hidden[1], layer=1).shape
        (torch.Size([3, 2, 7, 16]), torch.Size([2, 7, 50]))
        >>> bool((lens(hidden[-1], layer=-1) == logits).all())
        True
    """

    name = "logit"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.tap = statetap.attach(model)  # a plain attribute: the model is not a submodule

    @property
    def model(self) -> nn.Module:
        return self.tap.model

    @property
    def n_layers(self) -> int:
        return self.tap.adapter.n_layers

    @property
    def hidden_size(self) -> int:
        return self.tap.adapter.hidden_size

    def layer_index(self, layer: int) -> int:
        """``layer`` in ``0 .. n_layers-1`` (negative counts from the last); checked."""
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layer must be an int, got {layer!r}")
        if not -self.n_layers <= layer < self.n_layers:
            raise ValueError(f"layer {layer} is out of range for a model with {self.n_layers}")
        return layer % self.n_layers

    def translate(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """What the lens feeds the final norm for ``hidden`` ``[..., H]`` of ``layer``: here
        ``hidden`` itself."""
        self.layer_index(layer)
        return hidden

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` -> float32 logits ``[..., V]`` through the model's final norm and output
        embedding, as the model computes its own logits."""
        head = self.tap.adapter.unembedding
        normed = self.tap.adapter.final_norm(hidden)
        return head(normed.to(head.weight.dtype)).float()

    def forward(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Logits ``[..., V]`` (float32) the lens reads from ``hidden`` ``[..., H]``, the
        residual stream after block ``layer``."""
        if not isinstance(hidden, torch.Tensor) or hidden.shape[-1:] != (self.hidden_size,):
            raise ValueError(
                f"hidden must be a [..., H={self.hidden_size}] tensor, "
                f"got {list(getattr(hidden, 'shape', [type(hidden).__name__]))}"
            )
        return self.unembed(self.translate(hidden, layer))

    @torch.no_grad()
    def residuals(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One instrumented pass of the frozen model over ``input_ids`` ``[B, L]``.

        Returns:
            ``hidden`` ``[n_layers, B, L, H]`` (the residual stream after every block, at every
            position, in the model's dtype) and the model's logits ``[B, L, V]`` (float32).
        """
        emit = [statetap.Emit("residual", layers="all", positions="all")]
        result = self.tap.run(input_ids, attention_mask=attention_mask, emit=emit)
        hidden = torch.stack([result["residual", layer] for layer in range(self.n_layers)])
        return hidden, result.logits.float()

    @torch.no_grad()
    def predictions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of the lens at every layer, ``[n_layers, B, L, V]`` (float32)."""
        hidden, _ = self.residuals(input_ids, attention_mask)
        return torch.stack([self(hidden[layer], layer) for layer in range(self.n_layers)])


class TunedLens(LogitLens):
    """The tuned lens of ``model``: an identity-initialised affine translator for every layer
    but the last.

    Attributes:
        translators: ``translators[l]`` is ``nn.Linear(H, H)`` (float32), applied as
            ``h + translators[l](h)``, for ``l`` in ``0 .. n_layers-2``.
        meta: JSON-ready facts saved with the lens (:func:`statetap.interp.lens.train` records
            its config and losses here; the CLI the model name and data).
    """

    name = "tuned"

    def __init__(self, model: nn.Module, meta: dict | None = None) -> None:
        super().__init__(model)
        device = self.tap.device
        self.translators = nn.ModuleList(
            nn.Linear(self.hidden_size, self.hidden_size, device=device, dtype=torch.float32)
            for _ in range(self.n_layers - 1)
        )
        with torch.no_grad():
            for translator in self.translators:
                translator.weight.zero_()
                translator.bias.zero_()
        self.meta = dict(meta or {})

    def translate(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """``hidden + W_l hidden + b_l`` for ``hidden`` ``[..., H]`` (computed in float32,
        returned in ``hidden``'s dtype, which the final norm expects); ``hidden`` itself at the
        last layer."""
        layer = self.layer_index(layer)
        if layer == self.n_layers - 1:
            return hidden
        x = hidden.float()
        return (x + self.translators[layer](x)).to(hidden.dtype)

    def save(self, folder: str | Path) -> Path:
        """Write ``translators.safetensors`` and ``config.json`` to ``folder`` (created).

        Each file goes to a temporary name and is renamed into place, tensors first; the JSON
        records the sha256 of the tensor file, so :meth:`load` refuses a mismatched pair.
        """
        record = dict(
            kind=KIND,
            model_class=type(self.model).__name__,
            identity=model_identity(self.model),
            hidden_size=self.hidden_size,
            n_layers=self.n_layers,
            statetap_version=statetap.__version__,
            meta=self.meta,
        )
        folder = Path(folder)
        write_pair(folder / TRANSLATORS, folder / CONFIG, self.state_dict(), record, DIGEST)
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: nn.Module) -> TunedLens:
        """The lens saved in ``folder``, on ``model`` (which must be the class, width and depth
        it was trained on), its translators on the model's device.

        Raises:
            FileNotFoundError: a file is missing; ValueError: the folder holds something else,
                or the lens does not fit ``model`` or was trained on another model (another
                class, width, depth or config: the message names the mismatch); TypeError: the
                lens records no model identity (saved by an older statetap).
        """
        folder = Path(folder)
        require_files("tuned lens", folder / TRANSLATORS, folder / CONFIG)
        record = read_config(folder)
        tensors = read_tensors(folder / TRANSLATORS, folder / CONFIG, record, DIGEST)
        lens = cls(model, meta=record["meta"])
        expected = dict(
            model_class=type(model).__name__, hidden_size=lens.hidden_size, n_layers=lens.n_layers
        )
        wrong = [
            f"{k}: lens {record[k]!r}, model {v!r}" for k, v in expected.items() if record[k] != v
        ]
        if wrong:
            raise ValueError(
                f"the lens in {folder} was trained on another model: {'; '.join(wrong)}"
            )
        check_same(record.get("identity"), model_identity(model), f"the lens in {folder}")
        lens.load_state_dict({k: v.to(lens.tap.device) for k, v in tensors.items()})
        return lens


def read_config(folder: str | Path) -> dict:
    """The ``config.json`` of a saved tuned lens (checked to be one)."""
    path = Path(folder) / CONFIG
    record = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(record, dict) or record.get("kind") != KIND:
        raise ValueError(f"{path} does not describe a tuned lens (kind {KIND!r})")
    return record
