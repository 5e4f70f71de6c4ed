"""Metrics of a patched run, read from the logits of each prompt's last token.

A metric is any callable ``metric(logits, pairs) -> [B]`` where ``logits`` ``[B, V]`` are the
last-token logits of ``B`` runs and ``pairs`` ``[B]`` (int64) says which prompt (pair) each run
belongs to, so per-prompt answer tokens can be looked up.

Example:
    >>> import torch
    >>> metric = logit_difference(torch.tensor([3, 1]), torch.tensor([2, 0]))
    >>> metric(torch.arange(8.0).view(2, 4), torch.tensor([0, 1])).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _token_ids(tokens: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
        raise ValueError(f"{name} must be a [N] tensor of token ids, one per prompt")
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got {tokens.dtype}")
    return tokens.long()


def logit_difference(answer: torch.Tensor, wrong: torch.Tensor) -> Metric:
    """``logits[answer] - logits[wrong]`` of each prompt.

    Args:
        answer, wrong: ``[N]`` token ids: the clean run's answer and the corrupted run's.
    """
    answer, wrong = _token_ids(answer, "answer"), _token_ids(wrong, "wrong")
    if answer.shape != wrong.shape:
        raise ValueError(
            f"answer and wrong must have one token per prompt each, got {list(answer.shape)} "
            f"and {list(wrong.shape)}"
        )

    def metric(logits: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        pairs = pairs.to(logits.device)
        good = logits[rows, answer.to(logits.device)[pairs]]
        bad = logits[rows, wrong.to(logits.device)[pairs]]
        return (good - bad).float()

    return metric


def answer_probability(answer: torch.Tensor) -> Metric:
    """``softmax(logits)[answer]`` of each prompt (causal tracing's measure).

    Args:
        answer: ``[N]`` token ids.
    """
    answer = _token_ids(answer, "answer")

    def metric(logits: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        probabilities = logits.float().softmax(-1)
        return probabilities[rows, answer.to(logits.device)[pairs.to(logits.device)]]

    return metric


def fraction_recovered(
    patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor
) -> torch.Tensor:
    """``(patched - corrupt) / (clean - corrupt)`` per prompt: 0 = the corrupted run, 1 = the
    clean one.

    Args:
        patched: ``[N, ...]`` metric of the patched runs.
        clean, corrupt: ``[N]`` metric of the clean and the corrupted run.

    Returns:
        ``[N, ...]``; NaN for a prompt whose clean and corrupted metrics are equal (no gap to
        recover).
    """
    shape = (-1, *[1] * (patched.dim() - 1))
    gap = (clean - corrupt).view(shape)
    return (patched - corrupt.view(shape)) / gap.where(gap != 0, torch.nan)
