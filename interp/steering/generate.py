"""Open-ended generation with a steering vector, through ``Tap.generate``.

The mode says where the vector acts in the prompt (:mod:`statetap.interp.steering.modes`);
with ``steer_new`` the residual modes also add it at every generated token as it is fed back
(Rimsky et al. steer every position after the instruction, generated ones included).  A state
edit happens once, in the prompt: the recurrence carries it into every later token.

Example:
    >>> import torch, statetap
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> from statetap.interp.steering import Prompts, generate_steered, mean_difference
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
    ...                                      state_size=4)).eval()
    >>> tap = statetap.attach(model)
    >>> vectors = mean_difference(tap, Prompts([[1, 2, 3]]), Prompts([[1, 2, 4]]), progress=False)
    >>> out = generate_steered(tap, Prompts([[7, 8, 9, 10], [11, 12, 13]]), vectors, layer=1,
    ...                        multiplier=4.0, mode="both", max_new_tokens=5, min_new_tokens=5,
    ...                        do_sample=False, pad_token_id=0)
    >>> out.sequences.shape
    torch.Size([2, 9])
"""

from __future__ import annotations

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
    layer: int,
    multiplier: float,
    mode: Mode | str = "residual",
    steer_new: bool = True,
    pad_id: int = 0,
    other_model: bool = False,
    **generate_kwargs,
) -> GenerationResult:
    """Generate from ``prompts`` steered by ``multiplier`` times the vectors of ``layer``.

    Args:
        tap: ``statetap.attach(model)``.
        prompts: ``B`` prompts (left-padded here with ``pad_id``; transformers' RWKV-4 ignores
            the mask, so generate one prompt at a time there).
        vectors: from :func:`mean_difference`.
        layer: the layer to steer.
        multiplier: the vectors' multiplier (the state's is ``multiplier * mode.state_scale``).
        mode: a :class:`Mode` or a name of :data:`MODE_NAMES`.
        steer_new: residual modes also steer every generated token (needs ``max_new_tokens``).
        other_model: allow vectors computed on another model (see ``sweep``).
        generate_kwargs: passed to ``model.generate`` (``max_new_tokens``, ``do_sample`` …).

    Returns:
        ``Tap.generate``'s result: ``sequences`` ``[B, L + new]`` (prompts left-padded).
    """
    if not isinstance(prompts, Prompts):
        raise TypeError(f"prompts must be Prompts, got {type(prompts).__name__}")
    if not isinstance(vectors, SteeringVectors):
        raise TypeError(f"vectors must be SteeringVectors, got {type(vectors).__name__}")
    mode = mode if isinstance(mode, Mode) else steering_mode(mode)
    (layer,) = layer_indices(tap, [layer])
    vectors.check(tap, [layer], mode.state, other_model)
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
    if mode.residual is not None:
        value = vectors[RESIDUAL, layer]
        requests.append(Inject(RESIDUAL, layer, value, torch.tensor(residual), scale=multiplier))
    if mode.state:
        at, scale = torch.tensor(state), multiplier * mode.state_scale
        requests += [
            Inject(site, layer, value, at, scale=scale)
            for site, value in vectors.state(layer).items()
        ]
    ids, mask = pad(prompts.ids, side="left", pad_id=pad_id, device=tap.device)
    if mask is None:  # generate would mask prompt tokens equal to the pad id
        mask = torch.ones_like(ids)
    return tap.generate(ids, mask, inject=requests, **generate_kwargs)
