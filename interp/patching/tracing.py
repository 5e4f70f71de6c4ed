"""Causal tracing (Meng et al.'s ROME) on a recurrent model.

The corrupted run is the prompt with Gaussian noise added to the input embeddings of its
*subject* tokens (``noise`` times the standard deviation of the embedding matrix, several
seeded samples); each patch restores one site of the clean run at one (layer, position) —
the residual stream, a state component, or the whole recurrent state of the layer — and the
indirect effect is ``p(answer | restored) - p(answer | corrupted)``, averaged over the noise
samples.  Batched as activation patching is (:mod:`statetap.interp.patching.sweep`).

Example:
    >>> import torch, statetap
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> from statetap.interp.patching import causal_trace
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
    ...                                      state_size=4)).eval()
    >>> tap = statetap.attach(model)
    >>> result = causal_trace(tap, torch.randint(0, 64, (1, 6)), [1, 2], torch.tensor([7]),
    ...                       samples=3)
    >>> result.effect["state"].shape  # [N, layers, L]
    torch.Size([1, 2, 6])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from statetap import Tap
from statetap.interp.patching.metrics import answer_probability
from statetap.interp.patching.result import PatchingResult
from statetap.interp.patching.sweep import STATE, check_prompts, patch_sweep

TRACE_SITES = ("residual", STATE)


def subject_mask(subject: torch.Tensor | Sequence[int], n: int, length: int) -> torch.Tensor:
    """``[N, L]`` bool: the subject tokens, from a bool mask ``[N, L]`` or a list of positions
    shared by every prompt (negative from the end)."""
    if isinstance(subject, torch.Tensor) and subject.dtype == torch.bool:
        if subject.shape != (n, length):
            raise ValueError(f"subject mask must be [N={n}, L={length}], got {list(subject.shape)}")
        mask = subject.clone()
    else:
        if isinstance(subject, torch.Tensor) or not all(
            isinstance(p, int) and not isinstance(p, bool) for p in subject
        ):
            raise TypeError("subject must be a [N, L] bool tensor or a list of int positions")
        bad = [p for p in subject if not -length <= p < length]
        if bad:
            raise ValueError(f"subject positions {bad} are outside prompts of {length} tokens")
        mask = torch.zeros(n, length, dtype=torch.bool)
        mask[:, [p % length for p in subject]] = True
    if not bool(mask.any(1).all()):
        raise ValueError("subject must name at least one token of every prompt")
    return mask


def embedding_noise(
    tap: Tap, mask: torch.Tensor, samples: int, noise: float, seed: int
) -> torch.Tensor:
    """``[N * samples, L, d]`` Gaussian noise on the ``mask``-ed tokens (zeros elsewhere), of
    standard deviation ``noise`` x the std of the input embedding matrix; rows are prompt 0's
    samples, then prompt 1's, ... Drawn on the CPU from ``seed``."""
    embeddings = tap.model.get_input_embeddings().weight
    std = noise * embeddings.float().std().item()
    generator = torch.Generator().manual_seed(seed)
    n, length = mask.shape
    draws = torch.randn(n * samples, length, embeddings.shape[1], generator=generator) * std
    return draws * mask.repeat_interleave(samples, 0)[..., None]


def causal_trace(
    tap: Tap,
    prompts: torch.Tensor,
    subject: torch.Tensor | Sequence[int],
    answer: torch.Tensor,
    samples: int = 10,
    noise: float = 3.0,
    seed: int = 0,
    sites: Sequence[str] = TRACE_SITES,
    layers: Sequence[int] | str = "all",
    positions: Sequence[int] | None = None,
    batch_tokens: int = 2048,
    same_length: bool = False,
) -> PatchingResult:
    """Restore the clean run at every (site, layer, position) of the noised run.

    Args:
        tap: the model's :class:`statetap.Tap`.
        prompts: ``[N, L]`` token ids.
        subject: which tokens are noised: ``[N, L]`` bool, or positions shared by every prompt.
        answer: ``[N]`` token ids whose probability is traced.
        samples: noise samples per prompt.
        noise: the noise's standard deviation in multiples of the embeddings' (ROME: 3).
        seed: seeds the noise.
        sites: ``residual``, ``mixer``, a state component or ``"state"`` (every component of
            the layer); default residual and state.
        layers, positions, batch_tokens, same_length: see
            :func:`statetap.interp.patching.sweep.patch_sweep`.

    Returns:
        A :class:`PatchingResult`: ``clean`` is ``p(answer)`` without noise, ``corrupt`` with
        it (averaged over samples), ``effect[site]`` ``[N, layers, positions]`` the indirect
        effect averaged over samples.
    """
    check_prompts(prompts, prompts)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if not isinstance(noise, (int, float)) or not noise > 0 or noise == float("inf"):
        raise ValueError(f"noise must be a positive finite number, got {noise!r}")
    n, length = prompts.shape
    if not isinstance(answer, torch.Tensor) or answer.shape != (n,):
        raise ValueError(f"answer must be a [N={n}] tensor of token ids")
    mask = subject_mask(subject, n, length)
    offset = embedding_noise(tap, mask, samples, float(noise), seed)
    repeated = prompts.repeat_interleave(samples, 0)
    found = patch_sweep(
        tap,
        repeated,
        repeated,
        answer_probability(answer.repeat_interleave(samples)),
        sites=sites,
        layers=layers,
        positions=positions,
        corrupt_offset=offset,
        batch_tokens=batch_tokens,
        same_length=same_length,
    )
    return found.to_result(
        "causal tracing",
        lambda patched, clean, corrupt: patched - corrupt.view(-1, 1, 1),
        samples=samples,
        meta=dict(samples=samples, noise=float(noise), seed=seed, subject=mask.tolist()),
    )
