"""Layer x multiplier x mode steering sweeps, batched.

For each batch of prompts the sweep runs the prompts once, unsteered: that pass gives the
unsteered answer probabilities and each prompt's recurrent state just before the first token
any mode steers (the *fork point*, at most the third-last token; the paper's "run the prefix
unsteered and cache it").  The state becomes a :class:`statetap.RecurrentState` for the batch,
and every (layer, multiplier) of every mode continues from it over the remaining tokens: the
rows of one continuation pass are (layer, multiplier, prompt) triples taken from that state
(``RecurrentState.select``), with one ``Inject`` per layer whose per-row ``scale`` is the row's
multiplier (zero on rows of other layers).  No forward pass runs per multiplier.

Example:
    >>> import torch, statetap
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> from statetap.interp.steering import ContrastPairs, Prompts, mean_difference, sweep
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
    ...                                      state_size=4)).eval()
    >>> tap = statetap.attach(model)
    >>> pairs = ContrastPairs(Prompts([[5, 6, 7, 8], [9, 10, 11]]), torch.tensor([1, 2]),
    ...                       torch.tensor([2, 1]))
    >>> vectors = mean_difference(tap, *pairs.completions(), progress=False)
    >>> result = sweep(tap, pairs, vectors, [-1.0, 0.0, 1.0], modes=["residual", "state", "both"],
    ...                progress=False)
    >>> result.p_match.shape  # [modes, layers, multipliers, prompts]
    torch.Size([3, 2, 3, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

import statetap
from statetap import Emit, Inject, RecurrentState, Tap
from statetap.interp.batches import last_logits, length_batches, pad
from statetap.interp.provenance import model_identity
from statetap.interp.steering import metrics
from statetap.interp.steering.dataset import ContrastPairs
from statetap.interp.steering.modes import Mode, steering_mode
from statetap.interp.steering.vectors import (
    RESIDUAL,
    SteeringVectors,
    layer_indices,
    model_name,
)


@dataclass
class SweepResult:
    """Answer probabilities per (mode, layer, multiplier, prompt), and the unsteered model's.

    Attributes:
        modes, layers, multipliers: the sweep's axes.
        p_match, nonsense: ``[modes, layers, multipliers, N]`` float32.
        baseline_p_match, baseline_nonsense: ``[N]``, the unsteered model.
        meta: ``model``, ``model_class``, ``identity`` (the model's), ``dataset`` (sha256 of
            the pairs' token ids), ``vectors`` (the vectors' model, identity, dataset and
            variant), ``other_model`` (vectors from another model allowed),
            ``statetap_version``.
    """

    modes: list[Mode]
    layers: list[int]
    multipliers: list[float]
    p_match: torch.Tensor
    nonsense: torch.Tensor
    baseline_p_match: torch.Tensor
    baseline_nonsense: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def mode_names(self) -> list[str]:
        return [mode.name for mode in self.modes]

    def mode_index(self, name: str) -> int:
        if name not in self.mode_names:
            raise KeyError(f"no mode {name!r} in this sweep; it has {self.mode_names}")
        return self.mode_names.index(name)

    def max_effect_over_layers(self) -> torch.Tensor:
        """``[modes, multipliers]``: see :func:`metrics.max_effect_over_layers`."""
        return metrics.max_effect_over_layers(
            self.p_match, self.baseline_p_match, torch.tensor(self.multipliers)
        )

    def behaviour_range(self) -> torch.Tensor:
        """``[modes]``: see :func:`metrics.behaviour_range`."""
        return metrics.behaviour_range(self.p_match, self.baseline_p_match)

    def summary(self) -> dict:
        """Means over prompts and the paper's summaries, as plain JSON values."""
        effect, spread = self.max_effect_over_layers(), self.behaviour_range()
        return dict(
            baseline_p_match=self.baseline_p_match.mean().item(),
            baseline_nonsense=self.baseline_nonsense.mean().item(),
            modes={
                mode.name: dict(
                    p_match=self.p_match[i].mean(-1).tolist(),  # [layers][multipliers]
                    nonsense=self.nonsense[i].mean(-1).tolist(),
                    max_effect_over_layers=effect[i].tolist(),
                    behaviour_range=spread[i].item(),
                )
                for i, mode in enumerate(self.modes)
            },
        )


@torch.no_grad()
def sweep(
    tap: Tap,
    pairs: ContrastPairs,
    vectors: SteeringVectors,
    multipliers: Sequence[float],
    layers: Sequence[int] | str | None = None,
    modes: Sequence[Mode | str] = ("residual",),
    batch_size: int = 32,
    same_length: bool = False,
    progress: bool = True,
    other_model: bool = False,
) -> SweepResult:
    """Steer each prompt at each layer with each multiplier in each mode; measure ``p_match``.

    Args:
        tap: ``statetap.attach(model)``.
        pairs: prompts with their matching and non-matching answer tokens (``N`` rows).
        vectors: from :func:`mean_difference`, for this model.
        multipliers: ``M`` multipliers (0 gives the unsteered model).
        layers: layers to steer (default: every layer the vectors hold).
        modes: :class:`Mode` objects or names of :data:`MODE_NAMES`.
        batch_size: prompts per unsteered pass, and rows per continuation pass.
        same_length: batches hold prompts of one length only (models without a mask).
        progress: show a progress bar.
        other_model: steer with vectors computed on another model (another class or config;
            the shapes must still fit); recorded in ``meta``. By default that is refused.

    Returns:
        :class:`SweepResult` with ``p_match`` / ``nonsense`` ``[modes, layers, M, N]``.

    Raises:
        TypeError: ``pairs`` or ``vectors`` of the wrong type.
        ValueError: vectors computed on another model (both named) or that do not fit it,
            prompts too short for a mode.
    """
    if not isinstance(pairs, ContrastPairs):
        raise TypeError(f"pairs must be ContrastPairs, got {type(pairs).__name__}")
    if not isinstance(vectors, SteeringVectors):
        raise TypeError(f"vectors must be SteeringVectors, got {type(vectors).__name__}")
    modes = [mode if isinstance(mode, Mode) else steering_mode(mode) for mode in modes]
    names = [mode.name for mode in modes]
    if not modes or len(set(names)) != len(names):
        raise ValueError(f"modes must be distinct and at least one, got {names}")
    layers = layer_indices(tap, vectors.layers if layers is None else layers)
    vectors.check(tap, layers, any(mode.state for mode in modes), other_model)
    scales = torch.tensor([float(m) for m in multipliers], dtype=torch.float32)
    if scales.dim() != 1 or not len(scales):
        raise ValueError(f"multipliers must be a non-empty list of numbers, got {multipliers!r}")
    prompts = pairs.prompts
    plans, forks = _plan(prompts.lengths, prompts.instruction, modes)
    n, grid = len(prompts), (len(layers), len(scales))
    p_match = torch.full((len(modes), *grid, n), float("nan"))
    nonsense = p_match.clone()
    baseline_p_match = torch.full((n,), float("nan"))
    baseline_nonsense = baseline_p_match.clone()
    total = n * len(modes) * len(layers) * len(scales)
    with tqdm(total=total, desc="sweep", unit="run", disable=not progress) as bar:
        for rows in length_batches(prompts.lengths, batch_size, same_length):
            cuts = [forks[r] for r in rows]
            start, unsteered = _fork(tap, [prompts.ids[r] for r in rows], cuts)
            matching, not_matching = pairs.matching[rows], pairs.not_matching[rows]
            baseline_p_match[rows], baseline_nonsense[rows] = (
                t.cpu() for t in metrics.answer_probabilities(unsteered, matching, not_matching)
            )
            rest_ids, rest_mask = pad(
                [prompts.ids[r][c:] for r, c in zip(rows, cuts)], device=tap.device
            )
            for index, mode in enumerate(modes):
                want, state_at = _targets([plans[index][r] for r in rows], cuts, rest_ids.shape[1])
                jobs = torch.arange(len(rows) * len(layers) * len(scales))
                for chunk in jobs.split(batch_size):  # (layer, multiplier, prompt), prompt fastest
                    local = chunk % len(rows)
                    scale_index = chunk // len(rows) % len(scales)
                    layer_index = chunk // (len(rows) * len(scales))
                    requests = _requests(
                        mode,
                        vectors,
                        [layers[i] for i in layer_index.tolist()],
                        scales[scale_index],
                        want[local],
                        state_at[local],
                        tap.device,
                    )
                    logits = _continue(tap, start, rest_ids, rest_mask, local, requests)
                    chosen = torch.as_tensor(rows)[local]
                    p, bad = metrics.answer_probabilities(
                        logits, pairs.matching[chosen], pairs.not_matching[chosen]
                    )
                    p_match[index, layer_index, scale_index, chosen] = p.cpu()
                    nonsense[index, layer_index, scale_index, chosen] = bad.cpu()
                    bar.update(len(chunk))
    meta = dict(
        model=model_name(tap),
        model_class=type(tap.model).__name__,
        dataset=pairs.fingerprint(),
        identity=model_identity(tap.model),
        vectors={
            key: vectors.meta.get(key)
            for key in ("model", "identity", "dataset", "whitened", "whitening")
        },
        other_model=other_model,
        statetap_version=statetap.__version__,
    )
    return SweepResult(
        modes,
        layers,
        scales.tolist(),
        p_match,
        nonsense,
        baseline_p_match,
        baseline_nonsense,
        meta,
    )


def _plan(
    lengths: list[int], instruction: Sequence[int] | None, modes: list[Mode]
) -> tuple[list[list[tuple[list[int], list[int]]]], list[int]]:
    """Per mode and prompt, the steered positions (``Mode.positions``); per prompt, the fork
    point: the first steered position, at most ``length - 2`` (transformers' RWKV-4 cannot
    continue a batch with one token), at least 1."""
    plans = [
        [
            mode.positions(length, None if instruction is None else instruction[row])
            for row, length in enumerate(lengths)
        ]
        for mode in modes
    ]
    forks = []
    for row, length in enumerate(lengths):
        first = min(min(plan[row][0] + plan[row][1]) for plan in plans)
        fork = min(first, length - 2)
        if fork < 1:
            raise ValueError(
                f"prompt {row} ({length} tokens) is too short for modes "
                f"{[mode.name for mode in modes]}: a sweep needs a token before the first "
                f"steered one and at least 3 tokens"
            )
        forks.append(fork)
    return plans, forks


def _fork(
    tap: Tap, sequences: list[tuple[int, ...]], cuts: list[int]
) -> tuple[RecurrentState, torch.Tensor]:
    """One unsteered pass over ``sequences``: a state holding each row's recurrent state after
    its first ``cut`` tokens, and the logits ``[B, V]`` at each row's last token.

    A hybrid's cache also holds its attention layers' keys and values of every token before the
    cut, which setting the recurrent components cannot rebuild: there the prefixes themselves
    run (left-padded) into the state."""
    ids, mask = pad(sequences, device=tap.device)
    if tap.adapter.takes_cache_mask:
        prefixes = [row[:cut] for row, cut in zip(sequences, cuts)]
        prefix_ids, prefix_mask = pad(prefixes, side="left", device=tap.device)
        start = tap.run(prefix_ids, prefix_mask, keep_state=True).state
        return start, last_logits(tap.run(ids, mask).logits, mask)
    before_cut = torch.tensor(cuts)[:, None] - 1
    full = tap.run(ids, mask, emit=[Emit("state", "all", positions=before_cut)])
    # A state object with these rows (after any one token), then every component set.
    start = tap.run(ids[:, :1], keep_state=True).state
    for (site, layer), value in full.activations.items():
        start.edit(site, layer, value[:, 0], mode="set")
    return start, last_logits(full.logits, mask)


def _continue(
    tap: Tap,
    start: RecurrentState,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    local: torch.Tensor,
    requests: list[Inject],
) -> torch.Tensor:
    """Rows ``local`` ``[b]`` of the continuation ``ids`` ``[B, L]`` (right-padded by ``mask``)
    from the same rows of ``start``, with ``requests``: logits ``[b, V]`` at each last token."""
    local = local.to(tap.device)
    mask = None if mask is None else mask[local]
    out = tap.run(ids[local], mask, inject=requests, state=start.select(local))
    return last_logits(out.logits, mask)


def _targets(
    plans: list[tuple[list[int], list[int]]], cuts: list[int], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuation coordinates of the steered positions: ``[B, length]`` bool, where the
    residual is steered, and ``[B, k]`` int64, after which tokens the state is edited."""
    want = torch.zeros(len(plans), length, dtype=torch.bool)
    state_at = []
    for b, ((residual, state), cut) in enumerate(zip(plans, cuts)):
        want[b, [t - cut for t in residual]] = True
        state_at.append([t - cut for t in state])
    return want, torch.tensor(state_at, dtype=torch.long).reshape(len(plans), len(state_at[0]))


def _requests(
    mode: Mode,
    vectors: SteeringVectors,
    row_layers: list[int],
    row_scales: torch.Tensor,
    want: torch.Tensor,
    state_at: torch.Tensor,
    device: torch.device,
) -> list[Inject]:
    """The injections of one continuation pass: per layer present, the residual vector where
    ``want`` ``[B, L]`` says and the state vectors after ``state_at`` ``[B, k]``, scaled by
    ``row_scales`` ``[B]`` on that layer's rows and by zero on the others."""
    requests = []
    for layer in sorted(set(row_layers)):
        scale = (row_scales * (torch.tensor(row_layers) == layer)).to(device)
        if mode.residual is not None:
            value = want.to(device)[..., None] * vectors[RESIDUAL, layer].to(device)
            requests.append(Inject(RESIDUAL, layer, value, positions="all", scale=scale))
        if mode.state:
            requests += [
                Inject(site, layer, value, positions=state_at, scale=scale * mode.state_scale)
                for site, value in vectors.state(layer).items()
            ]
    return requests
