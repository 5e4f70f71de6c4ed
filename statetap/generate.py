"""Steering and reading a model while ``model.generate`` runs.

During generation positions name tokens of each row's text *including the generated ones*:
``0`` is the first real prompt token, a negative position counts back from the prompt's last
real token, and a position at or past the prompt's end names a generated token (the
``k``-th generated token sits at ``n_prompt + k``).  ``"new"`` names every generated token
as it is fed back (emissions then come back one slot per step).  The same :class:`Emit` and
:class:`Inject` requests as in a single pass apply, so steering "at the last prompt token and
every new token" is two requests.

The prompt goes through the prefill kernels and each new token through the decode-step
kernels, with the same hooks; each forward call of ``generate`` gets the work that falls in it.

Example:
    >>> import torch, statetap
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
    ...                                      state_size=4)).eval()
    >>> tap = statetap.attach(model)
    >>> out = tap.generate(
    ...     torch.randint(0, 64, (2, 5)), max_new_tokens=3, min_new_tokens=3, do_sample=False,
    ...     inject=[statetap.Inject("residual", 1, torch.randn(32), positions="new", scale=2.0)],
    ...     emit=[statetap.Emit("ssm", 0, positions="new")])
    >>> out.sequences.shape, out["ssm", 0].shape  # the last generated token is never fed back
    (torch.Size([2, 8]), torch.Size([2, 2, 64, 4]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from statetap.plan import Pass
from statetap.positions import padded_indices, real_tokens, text_indices

NEW = "new"


@dataclass
class GenerationResult:
    """What ``Tap.generate`` returns: the sequences ``[B, L + new]``, the model's own
    ``generate`` output, and the emitted tensors keyed by ``(site, layer)``."""

    sequences: torch.Tensor
    output: object
    activations: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, key: tuple[str, int]) -> torch.Tensor:
        if key not in self.activations:
            raise KeyError(f"nothing was emitted at {key}; emitted: {sorted(self.activations)}")
        return self.activations[key]


class _Schedule:
    """Turns generation-wide positions into each forward call's padded positions, and keeps
    track of which were reached."""

    def __init__(self, prompt_mask: torch.Tensor) -> None:
        self.real = prompt_mask.bool()
        self.counts = self.real.sum(1)  # [B] real prompt tokens
        self.call = 0  # 0: the prompt; k >= 1: the k-th fed-back token
        # id of a request -> (its name, text positions [B, P], which of them a call held)
        self.reached: dict[int, tuple[str, torch.Tensor, torch.Tensor]] = {}

    def positions(self, request, name: str) -> torch.Tensor:
        """``request``'s padded positions ``[B, P]`` within the current call (``-1``
        elsewhere); ``name`` names them in errors."""
        spec = request.positions
        batch = self.counts.shape[0]
        if isinstance(spec, str) and spec == NEW:
            fed_back = self.call > 0
            return torch.full((batch, 1), 0 if fed_back else -1, device=self.counts.device)
        text = text_indices(spec, self.counts, name, beyond=True)  # [B, P]
        if self.call == 0:
            here = padded_indices(text, self.real)
        else:
            here = torch.where(text == (self.counts + self.call - 1)[:, None], 0, -1)
        hit = torch.zeros_like(text, dtype=torch.bool)
        _, _, hit = self.reached.setdefault(id(request), (name, text, hit))
        hit |= here >= 0
        return here

    def check_reached(self) -> None:
        """Raise ValueError for a position that no forward call held (generation stopped, or
        the last generated token, which is never fed back)."""
        fed = self.counts + max(self.call - 1, 0)  # [B] tokens each row fed to the model
        for name, text, hit in self.reached.values():
            if not bool(hit.all()):
                row, slot = (int(i) for i in (~hit).nonzero()[0])
                raise ValueError(
                    f"{name}[{row}, {slot}] names token {int(text[row, slot])} of row {row}, "
                    f"which generation never fed to the model (it fed {int(fed[row])} tokens: "
                    f"the prompt and all but the last generated token); nothing was emitted or "
                    f"injected there. Ask for more new tokens or an earlier position"
                )


def generate(
    tap,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    emit: Sequence = (),
    inject: Sequence = (),
    **generate_kwargs,
) -> GenerationResult:
    """``model.generate`` with emissions and injections (see the module docstring).

    Args:
        tap: the :class:`statetap.Tap` of the model.
        input_ids, attention_mask: the prompts ``[B, L]`` (pad on the left).
        emit, inject: :class:`statetap.Emit` / :class:`statetap.Inject` requests.
        generate_kwargs: passed to ``model.generate`` (``max_new_tokens``, ``do_sample`` …).

    Raises:
        ValueError: a model in training mode, padding the model cannot generate from exactly,
            or a requested position that generation never reached (checked at the end: the
            last generated token is never fed back, and generation may stop early).
    """
    tap.check_eval_mode()
    tap.adapter.check_padding(attention_mask, keeps_state=True)
    batch, length = input_ids.shape
    mask = real_tokens(batch, length, attention_mask).to(input_ids.device)
    if not bool(mask[:, -1].all()):
        raise ValueError("generation needs every prompt to end with a real token: pad on the left")
    schedule = _Schedule(mask)
    pass_ = Pass(batch=batch, length=length)
    collected: dict[tuple[str, int], list[torch.Tensor]] = {}
    new_slots = {key for r in emit if r.positions == NEW for key in tap.emission_keys(r)}

    def before_call(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if schedule.call > 0:
            tap.adapter.check_run(ids.shape[0], ids.shape[1], continues=True)
        pass_.length, pass_.ops, pass_.results = ids.shape[1], {}, {}
        tap.plan(
            pass_,
            emit,
            inject,
            schedule.positions,
        )

    def after_call(module, args, output):
        for key, value in pass_.results.items():
            collected.setdefault(key, []).append(value)
        schedule.call += 1

    handles = [
        tap.model.register_forward_pre_hook(before_call, with_kwargs=True),
        tap.model.register_forward_hook(after_call),
    ]
    try:
        with tap.adapter.instrument(pass_):
            output = tap.adapter.generate(input_ids, attention_mask, **generate_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    schedule.check_reached()
    if new_slots and schedule.call < 2:
        raise ValueError(
            "positions='new' names the generated tokens fed back to the model, and generation "
            "fed back none (the last generated token is never fed back): ask for at least two "
            "new tokens"
        )
    activations = {}
    for key, parts in collected.items():
        if key in new_slots:  # one slot per fed-back token (the prompt call emits nothing)
            activations[key] = torch.cat(parts[1:], dim=1)
        else:  # each slot was filled by the one call that held its position; zeros elsewhere
            activations[key] = torch.stack(parts).sum(0)
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    return GenerationResult(sequences=sequences, output=output, activations=activations)
