"""Probe features of quirky prompts: residual stream and recurrent state at the last prompt token.

For each prompt (``"{a} + {b} = {s}. {character}:"``, or a dataset's statement) one
instrumented pass reads, at every
layer, the residual stream (the block's output) and every component of the recurrent state
*after* the prompt's last token (what the answer token will see: DESIGN.md section 2), plus the
model's own log-odds ``log p(true answer) - log p(false answer)`` there, the answers being the
example's ``choices`` (``" True"`` / ``" False"`` for the arithmetic). For the contrast-pair
probes the same is read after each completion: the statement ``prompt + true answer`` and its
negation ``prompt + false answer`` (Mallen et al.'s pairs take the last position of each).

Both completions of a prompt go through the model in the same batch, so one pass per
completion gives all three feature sets: the true answer's row's last two positions are the
prompt's last token and the statement, the false answer's row's last is the negation.

State components are flattened per layer: Mamba's ``ssm`` ``[D_inner, N]`` and ``conv``
``[D_inner, W]``, RWKV-4's ``wkv`` triple ``[3, C]`` (numerator, denominator, running maximum)
and the token-shift vectors ``[C]``; the site ``"state"`` puts all components of a layer side by
side (the layer's whole recurrent state). Flattening keeps every number the next token reads, so a
linear probe on it can find any linear function of the state; the probes standardize each
column, which puts the numerator/denominator scale of RWKV-4's triple and the conv window on
the same footing as the SSM state. No reduction (averaging over channels or the window) is
applied: it would hide exactly the per-channel structure a probe looks for.

Example:
    >>> import statetap                                                # doctest: +SKIP
    >>> from statetap import zoo                                       # doctest: +SKIP
    >>> model, tokenizer = zoo.load("quirky-mamba")                    # doctest: +SKIP
    >>> _, test = zoo.quirky_split(zoo.resolve("quirky-mamba"))         # doctest: +SKIP
    >>> found = quirky_features(statetap.attach(model), tokenizer, test)  # doctest: +SKIP
    >>> found.prompt["ssm"].shape  # [N, layers, D_inner * N_state]    # doctest: +SKIP
    torch.Size([2000, 2, 512])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from statetap.interp.batches import length_batches, pad
from statetap.interp.elk.dataset import QuirkyPrompt
from statetap.tap import Emit, Tap
from statetap.zoo.quirky import QuirkyExample
from statetap.zoo.train import choice_ids

RESIDUAL = "residual"
STATE = "state"  # every state component of a layer, side by side


@dataclass
class QuirkyFeatures:
    """Features of ``N`` quirky prompts, keyed by site: ``"residual"``, each state component, and
    ``"state"`` (all components of a layer concatenated, when there are several).

    Attributes:
        prompt: site -> ``[N, layers, D]`` float32 after the prompt's last token.
        statement: site -> ``[N, layers, D]`` after the prompt and its true answer.
        negation: site -> ``[N, layers, D]`` after the prompt and its false answer.
        log_odds: ``[N]`` float64, the model's ``log p(true) - log p(false answer)`` at the
            prompt's last token.
    """

    prompt: dict[str, torch.Tensor]
    statement: dict[str, torch.Tensor]
    negation: dict[str, torch.Tensor]
    log_odds: torch.Tensor

    @property
    def sites(self) -> list[str]:
        """The residual stream first, then the state components."""
        return list(self.prompt)

    @property
    def num_layers(self) -> int:
        return next(iter(self.prompt.values())).shape[1]

    def __len__(self) -> int:
        return self.log_odds.shape[0]


@torch.no_grad()
def quirky_features(
    tap: Tap,
    tokenizer,
    examples: Sequence[QuirkyExample | QuirkyPrompt],
    batch_size: int = 256,
    state: bool = True,
    progress: bool = True,
) -> QuirkyFeatures:
    """Residual and state features of ``examples`` at every layer, in large batches.

    Args:
        tap: ``statetap.attach`` of the model.
        tokenizer: its tokenizer; each example's two ``choices`` must be single tokens.
        examples: ``N`` quirky prompts (``example.text`` ends just before the answer; the
            arithmetic's :class:`QuirkyExample` or a dataset's :class:`QuirkyPrompt`).
        batch_size: completions per forward pass (each prompt contributes two).
        state: also read every recurrent-state component (else the residual stream only);
            refused on hybrids, whose attention layers hold no state.
        progress: show a progress bar.

    Returns:
        :class:`QuirkyFeatures` in the order of ``examples``, on the CPU.
    """
    if not examples:
        raise ValueError("examples must hold at least one quirky prompt")
    if state and len(tap.state_layers) < tap.adapter.n_layers:
        # the features and the probes index every site by the same layers
        raise ValueError(
            f"state features need a state at every layer, but {type(tap.model).__name__} has "
            f"one at tap.state_layers = {list(tap.state_layers)} only (a hybrid); pass "
            f"state=False for residual features at every layer"
        )
    false_ids, true_ids = choice_ids(tokenizer, [e.choices for e in examples]).unbind(1)
    prompts = tokenizer([e.text for e in examples], add_special_tokens=False)["input_ids"]
    rows = [(*p, int(t)) for p, t in zip(prompts, true_ids)]
    rows += [(*p, int(f)) for p, f in zip(prompts, false_ids)]
    n = len(examples)
    emit = [Emit(RESIDUAL, "all", positions=[-2, -1])]
    if state:
        emit.append(Emit("state", "all", positions=[-2, -1]))
    gathered: dict[tuple[str, int], torch.Tensor] = {}  # [2N, 2, D]: (prompt, completion)
    log_odds = torch.zeros(n, dtype=torch.float64)
    with tqdm(total=len(rows), desc="features", unit="seq", disable=not progress) as bar:
        for batch in length_batches([len(r) for r in rows], batch_size):
            ids, mask = pad([rows[i] for i in batch], device=tap.device)
            result = tap.run(ids, mask, emit=emit)
            index = torch.tensor(batch)
            for key, value in result.activations.items():
                value = value.flatten(2).float().cpu()
                if key not in gathered:
                    gathered[key] = value.new_zeros(len(rows), 2, value.shape[-1])
                gathered[key][index] = value
            truth_rows = index < n
            if truth_rows.any():
                lengths = torch.tensor([len(rows[i]) for i in batch])[truth_rows]
                logits = result.logits[truth_rows.to(result.logits.device)].double().cpu()
                logp = logits[torch.arange(len(lengths)), lengths - 2].log_softmax(-1)
                which = index[truth_rows]
                log_odds[which] = (
                    logp.gather(1, true_ids[which, None])[:, 0]
                    - logp.gather(1, false_ids[which, None])[:, 0]
                )
            bar.update(len(batch))
    sites = list(dict.fromkeys(site for site, _ in gathered))
    layers = sorted({layer for _, layer in gathered})

    def stack(site: str, rows_: slice, position: int) -> torch.Tensor:
        return torch.stack([gathered[site, layer][rows_, position] for layer in layers], dim=1)

    def read(rows_: slice, position: int) -> dict[str, torch.Tensor]:
        found = {site: stack(site, rows_, position) for site in sites}
        components = [found[site] for site in sites if site != RESIDUAL]
        if len(components) > 1:
            found[STATE] = torch.cat(components, dim=-1)
        return found

    first, second = slice(0, n), slice(n, 2 * n)
    return QuirkyFeatures(
        prompt=read(first, 0), statement=read(first, 1), negation=read(second, 1), log_odds=log_odds
    )
