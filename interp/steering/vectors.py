"""Steering vectors: mean differences of activations between two sets of sequences.

For each layer, the residual-stream vector is ``mean(positive) - mean(negative)`` of the
residual stream after that block at each sequence's last token (for contrast pairs: the answer
token); with ``whiten=True`` it becomes ``pinv(Cov) @ (mean(positive) - mean(negative))``, the
covariance taken over all positive and negative activations of the layer (the paper's "LDA"
variant, :func:`whiten_difference`: the pseudo-inverse in float64 by default, or in float32 with
``pinv_dtype=torch.float32`` as the paper's code computes it, which drops many more directions).
State vectors are the mean difference of every recurrent-state component after the last token
(Mamba: ``ssm`` and ``conv``; RWKV-4: the stored ``(aa, bb, pp)`` triple and the two token
shifts), never whitened.  Everything comes from one pass over the data in batches, each batch
emitting every requested layer at once.

Example:
    >>> import torch, statetap
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> from statetap.interp.steering import Prompts, mean_difference
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
    ...                                      state_size=4)).eval()
    >>> tap = statetap.attach(model)
    >>> positive = Prompts([[5, 6, 7], [8, 9]])
    >>> negative = Prompts([[5, 6, 1], [8, 2], [3, 3, 3, 3]])
    >>> vectors = mean_difference(tap, positive, negative, progress=False)
    >>> vectors["residual", 1].shape, vectors.state(0)["ssm"].shape
    (torch.Size([32]), torch.Size([64, 4]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

import statetap
from statetap import Emit, Tap
from statetap.interp.batches import length_batches, pad
from statetap.interp.provenance import check_same, model_identity
from statetap.interp.steering.dataset import Prompts, fingerprint

RESIDUAL = "residual"


@dataclass
class SteeringVectors:
    """Vectors keyed by ``(site, layer)`` like a ``TapResult``, with what they came from.

    Attributes:
        vectors: ``("residual", l)`` -> ``[H]``; ``(component, l)`` -> the component's
            per-row shape (``tap.site_shape``), float32, on the CPU.
        meta: ``model``, ``model_class``, ``identity`` (:func:`model_identity` of the model
            they were computed on; the CLI adds its tokenizer), ``layers``, ``sites`` (name ->
            shape), ``dataset`` (sha256 of the token ids), ``n_positive``, ``n_negative``,
            ``whitened``, ``statetap_version``.
    """

    vectors: dict[tuple[str, int], torch.Tensor]
    meta: dict = field(default_factory=dict)

    def __getitem__(self, key: tuple[str, int]) -> torch.Tensor:
        if key not in self.vectors:
            raise KeyError(f"no vector at {key}; these vectors hold layers {self.layers}")
        return self.vectors[key]

    @property
    def layers(self) -> list[int]:
        return sorted({layer for _, layer in self.vectors})

    @property
    def state_sites(self) -> list[str]:
        return list(dict.fromkeys(site for site, _ in self.vectors if site != RESIDUAL))

    def state(self, layer: int) -> dict[str, torch.Tensor]:
        """Every state component's vector at ``layer``."""
        return {site: self[site, layer] for site in self.state_sites}

    def check(
        self, tap: Tap, layers: Sequence[int], state: bool, other_model: bool = False
    ) -> None:
        """Raise unless these vectors fit ``tap``'s model at ``layers`` (the residual vector,
        and with ``state`` every state component) and were computed on that model (its class
        and config, :func:`~statetap.interp.provenance.model_identity`; ``other_model=True``
        skips this comparison, for vectors deliberately carried to another model).

        Raises:
            ValueError: naming ``vectors``: no recorded model identity, another model's class or
                config (both named), a missing layer or component, or a shape that is not the
                model's; with ``state``, a layer without a recurrent state (a hybrid's attention
                layer: ``tap.state_layers`` are named).
        """
        stateless = [layer for layer in layers if layer not in tap.state_layers] if state else []
        if stateless:
            raise ValueError(
                f"layers {stateless} hold no recurrent state, so a state steering mode has "
                f"nothing to edit there; the layers with one are tap.state_layers = "
                f"{list(tap.state_layers)} (steer the others in the residual mode)"
            )
        if not other_model:
            identity = self.meta.get("identity")
            if identity is None:
                raise ValueError(
                    "vectors.meta holds no 'identity' (vectors made by hand, or by an older "
                    "statetap): set meta['identity'] = statetap.interp.provenance."
                    "model_identity(model) of the model they come from, or pass other_model=True"
                )
            check_same(identity, model_identity(tap.model), "the vectors")
        sites = [RESIDUAL] + (list(tap.adapter.state_sites) if state else [])
        if state and set(self.state_sites) != set(tap.adapter.state_sites):
            raise ValueError(
                f"vectors hold the state components {self.state_sites or 'none'}, but "
                f"{type(tap.model).__name__}'s are {list(tap.adapter.state_sites)} "
                f"(vectors from another model, or computed with state=False?)"
            )
        for layer in layers:
            for site in sites:
                if (site, layer) not in self.vectors:
                    raise ValueError(
                        f"vectors have no {site!r} vector at layer {layer}; "
                        f"they hold layers {self.layers}"
                    )
                shape, expected = tuple(self.vectors[site, layer].shape), tap.site_shape(site)
                if shape != expected:
                    raise ValueError(
                        f"vectors[{site!r}, {layer}] has shape {list(shape)}, but this model's "
                        f"{site!r} site is {list(expected)}: vectors from another model?"
                    )


def model_name(tap: Tap) -> str:
    """The model's hub id or folder when its config records one, else its class name."""
    return getattr(tap.model.config, "_name_or_path", "") or type(tap.model).__name__


def layer_indices(tap: Tap, layers: Sequence[int] | str) -> list[int]:
    """``layers`` (``"all"``, or ints, negative from the last) as sorted indices."""
    n = tap.adapter.n_layers
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be 'all' or a list of ints, got {layers!r}")
        return list(range(n))
    if not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise ValueError(f"layers must be 'all' or a non-empty list of ints, got {layers!r}")
    bad = [x for x in layers if not -n <= x < n]
    if bad:
        raise ValueError(f"layers {bad} are out of range for a model with {n} layers")
    return sorted({x % n for x in layers})


@torch.no_grad()
def mean_difference(
    tap: Tap,
    positive: Prompts,
    negative: Prompts,
    layers: Sequence[int] | str = "all",
    state: bool = True,
    whiten: bool = False,
    pinv_dtype: torch.dtype = torch.float64,
    pinv_rtol: float | None = None,
    batch_size: int = 32,
    same_length: bool = False,
    progress: bool = True,
) -> SteeringVectors:
    """Steering vectors from two sets of sequences, read at each sequence's last token.

    Args:
        tap: ``statetap.attach(model)``.
        positive, negative: the two sets (``ContrastPairs.completions()`` for contrast pairs;
            any two prompt sets, e.g. the same questions asked by two characters).
        layers: ``"all"`` or layer indices.
        state: also compute state vectors (every state component).
        whiten: the "LDA" variant of the residual vectors (see the module docstring).
        pinv_dtype, pinv_rtol: the whitening's pseudo-inverse (:func:`whiten_difference`):
            float64 (default) or float32 (the paper's), and its cut-off (None: torch's default
            for the dtype).
        batch_size: sequences per forward pass (positive and negative share batches).
        same_length: batches hold sequences of one length only (models without a mask).
        progress: show a progress bar.

    Returns:
        :class:`SteeringVectors` with ``("residual", l)`` ``[H]`` and, with ``state``,
        ``(component, l)`` for every layer ``l`` that holds a state (``tap.state_layers``).
    """
    for name, value in (("positive", positive), ("negative", negative)):
        if not isinstance(value, Prompts):
            raise TypeError(f"{name} must be Prompts, got {type(value).__name__}")
    layers = layer_indices(tap, layers)
    state_layers = tap.layers_with("state", layers) if state else []
    emit = [Emit(RESIDUAL, layers, positions=-1)]
    emit += [Emit("state", state_layers, positions=-1)] if state_layers else []
    sequences = positive.ids + negative.ids
    is_positive = torch.arange(len(sequences)) < len(positive)
    sums: dict[tuple[str, int], torch.Tensor] = {}  # [2, *shape]: negative, positive
    residuals: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    with tqdm(total=len(sequences), desc="vectors", unit="seq", disable=not progress) as bar:
        for rows in length_batches([len(s) for s in sequences], batch_size, same_length):
            ids, mask = pad([sequences[i] for i in rows], device=tap.device)
            result = tap.run(ids, mask, emit=emit)
            label = is_positive[rows].long().to(tap.device)
            for key, value in result.activations.items():
                value = value[:, 0].double()
                total = sums.setdefault(key, value.new_zeros(2, *value.shape[1:]))
                total.index_add_(0, label, value)
                if whiten and key[0] == RESIDUAL:
                    residuals[key[1]].append(value.float().cpu())
            bar.update(len(rows))
    if whiten:
        check_pinv_arguments(pinv_dtype, pinv_rtol)
    counts = torch.tensor([len(negative), len(positive)], dtype=torch.float64)
    vectors, kept = {}, {}
    for key, total in sums.items():
        means = total.cpu() / counts.view(2, *[1] * (total.dim() - 1))
        difference = means[1] - means[0]
        if whiten and key[0] == RESIDUAL:
            activations = torch.cat(residuals[key[1]])
            difference, kept[key[1]] = whiten_difference(
                activations, difference, pinv_dtype, pinv_rtol
            )
        vectors[key] = difference.float()
    meta = dict(
        model=model_name(tap),
        model_class=type(tap.model).__name__,
        identity=model_identity(tap.model),
        layers=layers,
        sites={site: list(tap.site_shape(site)) for site in dict.fromkeys(s for s, _ in vectors)},
        dataset=fingerprint(positive.ids, negative.ids),
        n_positive=len(positive),
        n_negative=len(negative),
        whitened=whiten,
        statetap_version=statetap.__version__,
    )
    if whiten:
        meta["whitening"] = dict(
            pinv_dtype=str(pinv_dtype).removeprefix("torch."), pinv_rtol=pinv_rtol, kept=kept
        )
    return SteeringVectors(vectors, meta)


def check_pinv_arguments(dtype: torch.dtype, rtol: float | None) -> None:
    """Raise unless ``dtype`` is float32 or float64 and ``rtol`` None or a number >= 0."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"pinv_dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if rtol is not None and (
        isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0
    ):
        raise ValueError(f"pinv_rtol must be None or a number >= 0, got {rtol!r}")


def whiten_difference(
    activations: torch.Tensor,
    difference: torch.Tensor,
    dtype: torch.dtype = torch.float64,
    rtol: float | None = None,
) -> tuple[torch.Tensor, int]:
    """``pinv(Cov) @ difference``: the "LDA" direction of a mean difference.

    The covariance of ``activations`` is taken in float64, then rounded to ``dtype``, whose
    ``torch.linalg.pinv`` (SVD) drops every direction whose singular value is at most ``rtol``
    times the largest; None is torch's default, ``finfo(dtype).eps * H``.  In float32 that
    cut-off (7.6e-6 at ``H = 64``) drops every direction the covariance barely varies along, as
    the paper's code (``pinv(acts.T.cov().float())``) did; in float64 (1.4e-14) a near-singular
    covariance keeps nearly all of them, each weighted by one over its tiny variance.

    Args:
        activations: ``[N, H]``, the positive and negative activations of the layer.
        difference: ``[H]``, ``mean(positive) - mean(negative)``.
        dtype: ``torch.float64`` or ``torch.float32`` (the paper's).
        rtol: the relative cut-off, >= 0; None: torch's default for ``dtype``.

    Returns:
        The vector ``[H]`` (float64) and the number of directions kept (the pseudo-inverse's
        rank).
    """
    check_pinv_arguments(dtype, rtol)
    covariance = torch.cov(activations.double().T).to(dtype)
    if rtol is None:
        rtol = torch.finfo(dtype).eps * covariance.shape[0]
    precision = torch.linalg.pinv(covariance, rtol=rtol)
    kept = int(torch.linalg.matrix_rank(covariance, rtol=rtol))
    return precision.double() @ difference.double(), kept
