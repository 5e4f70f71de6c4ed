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
side (the layer's whole recurrent state). On a hybrid (Jamba, Bamba, Granite 4.0 hybrid,
Nemotron-H, the gated delta-rule hybrids) only the recurrent layers hold a state: the residual
stream is read at every layer and the state sites at ``tap.state_layers`` only, and
``QuirkyFeatures.layers`` names, per site, the model layer of each column. Flattening keeps
every number the next token reads, so a linear probe on it can find any linear function of the
state; the probes standardize each column, which puts the numerator/denominator scale of
RWKV-4's triple and the conv window on the same footing as the SSM state. No reduction
(averaging over channels or the window) is applied: it would hide exactly the per-channel
structure a probe looks for.

Example:
    >>> import statetap                                                # doctest: +SKIP
    >>> from statetap import zoo                                       # doctest: +SKIP
    >>> model, tokenizer = zoo.load("quirky-mamba")                    # doctest: +SKIP
    >>> _, test = zoo.quirky_split(zoo.resolve("quirky-mamba"))         # doctest: +SKIP
    >>> found = quirky_features(statetap.attach(model), tokenizer, test)  # doctest: +SKIP
    >>> found.prompt["ssm"].shape  # [N, layers, D_inner * N_state]    # doctest: +SKIP
    torch.Size([2000, 2, 512])
    >>> found.layers["ssm"]  # the model layer of each of those columns  # doctest: +SKIP
    [0, 1]
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
        prompt: site -> ``[N, layers(site), D]`` float32 after the prompt's last token.
        statement: site -> ``[N, layers(site), D]`` after the prompt and its true answer.
        negation: site -> ``[N, layers(site), D]`` after the prompt and its false answer.
        log_odds: ``[N]`` float64, the model's ``log p(true) - log p(false answer)`` at the
            prompt's last token.
        layers: site -> the model layer of each of its columns, increasing (every layer for the
            residual stream, ``tap.state_layers`` for the state sites); None: ``0 .. layers-1``
            for every site.
    """

    prompt: dict[str, torch.Tensor]
    statement: dict[str, torch.Tensor]
    negation: dict[str, torch.Tensor]
    log_odds: torch.Tensor
    layers: dict[str, list[int]] | None = None

    def __post_init__(self) -> None:
        for side in ("statement", "negation"):
            shapes = {site: list(v.shape) for site, v in getattr(self, side).items()}
            if list(shapes) != self.sites or any(
                shape[:2] != list(self.prompt[site].shape[:2]) for site, shape in shapes.items()
            ):
                raise ValueError(
                    f"{side} must hold the sites of prompt with its [N, layers] per site, got "
                    f"{shapes} for { ({s: list(v.shape) for s, v in self.prompt.items()}) }"
                )
        if self.layers is None:
            self.layers = {site: list(range(v.shape[1])) for site, v in self.prompt.items()}
        if list(self.layers) != self.sites:
            raise ValueError(f"layers must name the sites {self.sites}, got {list(self.layers)}")
        for site, layers in self.layers.items():
            ordered = all(isinstance(i, int) and i >= 0 for i in layers) and layers == sorted(
                set(layers)
            )
            if not ordered or len(layers) != self.prompt[site].shape[1]:
                raise ValueError(
                    f"layers[{site!r}] must be {self.prompt[site].shape[1]} increasing layer "
                    f"indices (one per column of prompt[{site!r}]), got {layers}"
                )

    @property
    def sites(self) -> list[str]:
        """The residual stream first, then the state components."""
        return list(self.prompt)

    @property
    def num_layers(self) -> int:
        """How many layers some site is read at."""
        return len({layer for layers in self.layers.values() for layer in layers})

    def at(self, site: str, layer: int) -> int:
        """The column of ``site``'s features ``[N, layers(site), D]`` that holds model layer
        ``layer``."""
        if site not in self.layers:
            raise ValueError(f"site must be one of {self.sites}, got {site!r}")
        if layer not in self.layers[site]:
            raise ValueError(
                f"layer must be one of the layers {site!r} is read at, {self.layers[site]}; "
                f"got {layer!r}"
            )
        return self.layers[site].index(layer)

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
        state: also read every recurrent-state component at ``tap.state_layers`` (else the
            residual stream only; on a hybrid the attention layers hold no state).
        progress: show a progress bar.

    Returns:
        :class:`QuirkyFeatures` in the order of ``examples``, on the CPU.
    """
    if not examples:
        raise ValueError("examples must hold at least one quirky prompt")
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
    layers = {site: sorted(layer for each, layer in gathered if each == site) for site in sites}
    components = [site for site in sites if site != RESIDUAL]
    if len(components) > 1:
        # the layers of a recurrent mixer hold every component
        layers[STATE] = layers[components[0]]

    def stack(site: str, rows_: slice, position: int) -> torch.Tensor:
        return torch.stack([gathered[site, layer][rows_, position] for layer in layers[site]], 1)

    def read(rows_: slice, position: int) -> dict[str, torch.Tensor]:
        found = {site: stack(site, rows_, position) for site in sites}
        if len(components) > 1:
            found[STATE] = torch.cat([found[site] for site in components], dim=-1)
        return found

    first, second = slice(0, n), slice(n, 2 * n)
    return QuirkyFeatures(
        prompt=read(first, 0),
        statement=read(first, 1),
        negation=read(second, 1),
        log_odds=log_odds,
        layers=layers,
    )
