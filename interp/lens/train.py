"""Training the tuned lens: KL(p_final || p_lens) with the model frozen, as Belrose et al. did.

Each step draws ``config.windows_per_step`` windows of ``config.seq_len`` tokens from the
stream (shuffled epochs), runs the frozen model over them in passes of ``config.batch_size``
windows (one instrumented pass emits the residual stream of every layer at every position),
and accumulates the gradient of

    loss = sum over layers l < n_layers-1 of mean over the step's tokens of KL(p_final || p_l)

where ``p_final`` is the model's next-token distribution and ``p_l`` the lens's at layer ``l``.
Then one SGD step (Nesterov momentum, weight decay, learning rate decayed linearly to 0 from
``config.step_lr``), after clipping the gradient to ``config.max_grad_norm`` when it is set.

Data parallelism: when ``torch.distributed`` is initialised (``torchrun``), every rank draws
the same windows, takes every ``world_size``-th of them from its rank on, and the gradients
(sums over tokens, divided by the step's total token count) are all-reduced before the step:
the result equals one process's up to floating-point summation order. Every rank must pass the
same stream and config.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from statetap.interp.lens.config import PAPER_RECIPE, TrainConfig
from statetap.interp.lens.data import step_windows, windows
from statetap.interp.lens.lens import TunedLens


def train(
    lens: TunedLens,
    stream: torch.Tensor,
    config: TrainConfig = PAPER_RECIPE,
    progress: bool = True,
) -> list[float]:
    """Train ``lens``'s translators in place on ``stream`` ``[T]`` (token ids), starting from
    their current values.

    Records ``config`` and the losses in ``lens.meta`` (saved with the lens).

    Returns:
        The loss of every step (the sum over layers of the mean KL, nats, before the update).
    """
    if not isinstance(lens, TunedLens):
        raise TypeError(f"lens must be a TunedLens, got {type(lens).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not lens.translators:
        raise ValueError("a one-layer model has no translators to train (the last layer has none)")
    data = windows(stream, config.seq_len)
    rank, world = rank_and_world()
    parameters = list(lens.translators.parameters())
    optimizer = torch.optim.SGD(
        parameters,
        lr=config.step_lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / config.steps)
    order = step_windows(len(data), config.windows_per_step, config.seed)
    device = lens.tap.device
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="tuned lens", disable=not progress or rank != 0)
    with frozen(lens.model):
        for _ in bar:
            for parameter in parameters:
                parameter.grad = torch.zeros_like(parameter)
            loss = torch.zeros((), dtype=torch.float64, device=device)
            for rows in next(order)[rank::world].split(config.batch_size):
                loss += backward_kl(lens, data[rows].to(device), 1 / config.tokens_per_step)
            if world > 1:
                for parameter in parameters:
                    dist.all_reduce(parameter.grad)
                dist.all_reduce(loss)
            if config.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(kl=f"{losses[-1]:.4f}")
    lens.meta["train"] = asdict(config)
    lens.meta["losses"] = losses
    return losses


def estimate_seconds(lens: TunedLens, stream: torch.Tensor, config: TrainConfig) -> float:
    """Seconds :func:`train` will take with ``config`` on this process, estimated by timing one
    pass of ``config.batch_size`` windows of ``stream`` (forward and backward, as training runs
    them; the gradients it leaves are discarded, :func:`train` zeroes them every step) and
    scaling to the recipe's passes (this rank's share of them under ``torch.distributed``)."""
    import time

    data = windows(stream, config.seq_len)
    _, world = rank_and_world()
    batch = data[: config.batch_size].to(lens.tap.device)
    with frozen(lens.model):
        start = time.perf_counter()
        backward_kl(lens, batch, 0.0)
        seconds = time.perf_counter() - start
    for parameter in lens.translators.parameters():
        parameter.grad = None
    passes = math.ceil(config.windows_per_step / world / config.batch_size) * config.steps
    return seconds * passes * config.batch_size / len(batch)


def backward_kl(lens: TunedLens, input_ids: torch.Tensor, scale: float) -> torch.Tensor:
    """Add to the translators' gradients that of ``scale`` times the summed KL(p_final || p_l)
    over the tokens of ``input_ids`` ``[B, L]`` and the layers below the last (one backward per
    layer, so one layer's logits are alive at a time). Returns that scaled sum (float64)."""
    hidden, final = lens.residuals(input_ids)
    target = final.log_softmax(-1)
    total = torch.zeros((), dtype=torch.float64, device=final.device)
    for layer in range(lens.n_layers - 1):
        loss = scale * kl_to_final(lens(hidden[layer], layer).log_softmax(-1), target)
        loss.backward()
        total += loss.detach()
    return total


def kl_to_final(log_probs: torch.Tensor, final_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(p_final || p_lens) (nats) summed over tokens, from the lens's and the model's
    log-probabilities ``[..., V]``."""
    return F.kl_div(log_probs, final_log_probs, log_target=True, reduction="sum")


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (``0, 1`` without ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """``requires_grad=False`` on every parameter of ``model`` for the block (the lens
    backpropagates through its final norm and output embedding, which must not collect
    gradients); the flags are restored afterwards."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
