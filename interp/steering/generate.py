"""Open-ended generation steered at one or several layers at once, through ``Tap.generate``.

Each steered layer gets its own vectors (those of ``SteeringVectors`` at that layer) and its own
multiplier.  The mode says where they act in the prompt (:mod:`statetap.interp.steering.modes`);
with ``steer_new`` the residual modes also add them at every generated token as it is fed back
(Rimsky et al. steer every position after the instruction, generated ones included).  A state
edit happens once, in the prompt: the recurrence carries it into every later token.  The
paper's story generation (rnngineering ``Steering/steer_story.py``) is the state mode at every
layer with sampling from the whole softmax: ``layers="all", mode="state", do_sample=True,
top_k=0`` (transformers otherwise keeps the 50 likeliest tokens).

Decoding is the model's own ``generate``: greedy, or sampling with ``do_sample=True`` and its
``temperature`` / ``top_k`` / ``top_p``; ``seed`` makes the draws reproducible without touching
the caller's random state.

Example:
    >>> import torch, statetap
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> from statetap.interp.steering import Prompts, generate_steered, mean_difference
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
    ...                                      state_size=4)).eval()
    >>> tap = statetap.attach(model)
    >>> vectors = mean_difference(tap, Prompts([[1, 2, 3]]), Prompts([[1, 2, 4]]), progress=False)
    >>> out = generate_steered(tap, Prompts([[7, 8, 9, 10], [11, 12, 13]]), vectors,
    ...                        layers=[0, 1], multiplier=[4.0, -2.0], mode="both",
    ...                        max_new_tokens=5, min_new_tokens=5, pad_token_id=0,
    ...                        do_sample=True, temperature=0.7, top_k=20, seed=1)
    >>> out.sequences.shape
    torch.Size([2, 9])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from statetap import Inject, Tap
from statetap.generate import GenerationResult
from statetap.interp.batches import pad
from statetap.interp.steering.dataset import Prompts
from statetap.interp.steering.modes import Mode, steering_mode
from statetap.interp.steering.vectors import RESIDUAL, SteeringVectors, layer_indices


@torch.no_grad()
def generate_steered(
    tap: Tap,
    prompts: Prompts,
    vectors: SteeringVectors,
    layers: int | Sequence[int] | str,
    multiplier: float | Sequence[float],
    mode: Mode | str = "residual",
    steer_new: bool = True,
    pad_id: int = 0,
    other_model: bool = False,
    seed: int | None = None,
    **generate_kwargs,
) -> GenerationResult:
    """Generate from ``prompts`` steered at each of ``layers`` by its multiplier times its vectors.

    Args:
        tap: ``statetap.attach(model)``.
        prompts: ``B`` prompts (left-padded here with ``pad_id``; transformers' RWKV-4 ignores
            the mask, so generate one prompt at a time there).
        vectors: from :func:`mean_difference`; the vectors of each steered layer are used there.
        layers: one layer, several (negative from the last), or ``"all"``.
        multiplier: one for every layer, or one per layer of ``layers`` in its order (the
            state's is ``multiplier * mode.state_scale``).
        mode: a :class:`Mode` or a name of :data:`MODE_NAMES`.
        steer_new: residual modes also steer every generated token (needs ``max_new_tokens``).
        other_model: allow vectors computed on another model (see ``sweep``).
        seed: seed of the sampling draws (``torch.manual_seed`` inside a forked random state,
            so the caller's is left as it was); None draws from the current state.
        generate_kwargs: passed to ``model.generate`` (``max_new_tokens``, ``do_sample``,
            ``temperature``, ``top_k``, ``top_p`` …).

    Returns:
        ``Tap.generate``'s result: ``sequences`` ``[B, L + new]`` (prompts left-padded).

    Raises:
        ValueError: a layer out of range or given twice, a multiplier count that is not one or
            the number of layers, vectors that do not fit the model, prompts too short for the
            mode.
        TypeError: ``prompts`` / ``vectors`` of the wrong type, a ``seed`` that is not an int.
    """
    if not isinstance(prompts, Prompts):
        raise TypeError(f"prompts must be Prompts, got {type(prompts).__name__}")
    if not isinstance(vectors, SteeringVectors):
        raise TypeError(f"vectors must be SteeringVectors, got {type(vectors).__name__}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    mode = mode if isinstance(mode, Mode) else steering_mode(mode)
    multipliers = layer_multipliers(tap, layers, multiplier)
    vectors.check(tap, list(multipliers), mode.state, other_model)
    new = 0
    if steer_new and mode.residual is not None:
        new = generate_kwargs.get("max_new_tokens")
        if not isinstance(new, int) or new < 1:
            raise ValueError("steer_new needs max_new_tokens (a positive int) in generate_kwargs")
    instruction = prompts.instruction or [None] * len(prompts)
    residual, state = [], []
    for n, head in zip(prompts.lengths, instruction):
        steered, edited = mode.positions(n, head)
        residual.append(steered + list(range(n, n + new - 1)))  # the last new token is not fed
        state.append(edited)
    if len({len(row) for row in residual}) > 1:
        raise ValueError(
            f"mode {mode.name!r} steers a different number of tokens in different prompts "
            f"(instructions of different lengths): generate them in separate calls"
        )
    requests = []
    for layer, m in multipliers.items():
        if mode.residual is not None:
            value = vectors[RESIDUAL, layer]
            requests.append(Inject(RESIDUAL, layer, value, torch.tensor(residual), scale=m))
        if mode.state:
            at, scale = torch.tensor(state), m * mode.state_scale
            requests += [
                Inject(site, layer, value, at, scale=scale)
                for site, value in vectors.state(layer).items()
            ]
    ids, mask = pad(prompts.ids, side="left", pad_id=pad_id, device=tap.device)
    if mask is None:  # generate would mask prompt tokens equal to the pad id
        mask = torch.ones_like(ids)
    if seed is None:
        return tap.generate(ids, mask, inject=requests, **generate_kwargs)
    devices = [tap.device] if tap.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return tap.generate(ids, mask, inject=requests, **generate_kwargs)


def layer_multipliers(
    tap: Tap, layers: int | Sequence[int] | str, multiplier: float | Sequence[float]
) -> dict[int, float]:
    """``{layer index: multiplier}`` for ``layers`` (an int, ints negative from the last, or
    ``"all"``) and one multiplier for all of them or one per layer, in ``layers``' order.

    Raises:
        ValueError: a layer out of range or named twice, or a multiplier count that is not one
            or the number of layers.
        TypeError: a multiplier that is not a number.
    """
    requested = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else layers
    indices = layer_indices(tap, requested)  # validated
    if not isinstance(requested, str):
        indices = [layer % tap.adapter.n_layers for layer in requested]
        if len(set(indices)) != len(indices):
            raise ValueError(f"layers {list(requested)} name a layer twice")
    if isinstance(multiplier, (int, float)) and not isinstance(multiplier, bool):
        multiplier = [multiplier] * len(indices)
    multiplier = list(multiplier)
    if not all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in multiplier):
        raise TypeError(f"multiplier must be a number or a sequence of numbers, got {multiplier}")
    if len(multiplier) != len(indices):
        raise ValueError(
            f"{len(multiplier)} multipliers for {len(indices)} layers {indices}: give one for "
            f"all layers or one per layer"
        )
    return {layer: float(m) for layer, m in zip(indices, multiplier)}
