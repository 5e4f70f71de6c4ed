"""State transplant: one prompt's recurrent state put into another prompt's, then continue.

The source prompt's state after one of its tokens (every component, or chosen ones, at any
layers) is set into — or added to — the target prompt's state just before a chosen target
token; the target then runs on (its logits) or generates from there.  This is "latent state
reading" from the rnngineering work: what does the model say about a context it only holds
as a state?

Example:
    >>> import torch, statetap
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> from statetap.interp.patching import transplant_state
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
    ...                                      state_size=4)).eval()
    >>> tap = statetap.attach(model)
    >>> out = transplant_state(tap, torch.randint(0, 64, (1, 9)), torch.randint(0, 64, (3, 5)),
    ...                        before=2, layers=[1])
    >>> out.logits.shape
    torch.Size([3, 5, 64])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from statetap import Emit, Inject, Tap, TapResult
from statetap.generate import GenerationResult
from statetap.interp.patching.sweep import site_layers


@torch.no_grad()
def transplant_state(
    tap: Tap,
    source: torch.Tensor,
    target: torch.Tensor,
    before: int | None = None,
    layers: Sequence[int] | str = "all",
    sites: Sequence[str] | None = None,
    mode: str = "set",
    scale: float | torch.Tensor | None = None,
    source_position: int = -1,
    source_mask: torch.Tensor | None = None,
    target_mask: torch.Tensor | None = None,
    generate: dict | None = None,
) -> TapResult | GenerationResult:
    """Put ``source``'s state into ``target``'s before token ``before``, then run or generate.

    Args:
        tap: the model's :class:`statetap.Tap`.
        source: ``[B, Ls]`` or ``[1, Ls]`` (one source for every target) token ids.
        target: ``[B, Lt]`` token ids.
        before: the first target token that reads the transplanted state (``1 .. Lt``; its
            state is changed after token ``before - 1``); default ``Lt``, after the whole
            target prompt (the state that generation continues from).
        layers: ``"all"`` or ints: the layers whose state is moved.
        sites: state components to move (default every one).
        mode: ``"set"`` (replace) or ``"add"`` (``+= scale * source state``).
        scale: for ``add``: a float or a ``[B]`` tensor.
        source_position: the source token after which its state is read (negative from the
            end of each row's text).
        source_mask, target_mask: attention masks of the two batches.
        generate: ``model.generate`` keyword arguments: generate from the transplanted state
            (:meth:`statetap.Tap.generate`) instead of one pass.

    Returns:
        The target's :class:`statetap.TapResult` (``logits`` ``[B, Lt, V]``), or its
        :class:`statetap.generate.GenerationResult` with ``generate``.
    """
    for name, ids in (("source", source), ("target", target)):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
            raise ValueError(f"{name} must be a [B, L] tensor of token ids")
    if source.shape[0] not in (1, target.shape[0]):
        raise ValueError(
            f"source must have 1 row or one per target row ({target.shape[0]}), got "
            f"{source.shape[0]}"
        )
    length = target.shape[1]
    before = length if before is None else before
    if not isinstance(before, int) or isinstance(before, bool) or not 1 <= before <= length:
        raise ValueError(
            f"before must be an int in 1 .. {length} (the target's length), got {before!r}"
        )
    components = list(tap.adapter.state_sites) if sites is None else list(sites)
    unknown = [site for site in components if site not in tap.adapter.state_sites]
    if unknown or not components:
        raise ValueError(
            f"sites must be state components of the model "
            f"({list(tap.adapter.state_sites)}), got {list(components)}"
        )
    chosen = {site: site_layers(tap, site, layers) for site in components}
    read = tap.run(
        source.to(tap.device),
        attention_mask=source_mask,
        emit=[Emit(site, chosen[site], positions=[source_position]) for site in components],
    )
    inject = [
        Inject(site, layer, read[site, layer], positions=before - 1, mode=mode, scale=scale)
        for site in components
        for layer in chosen[site]
    ]
    target = target.to(tap.device)
    if generate is not None:
        if "attention_mask" in generate:
            raise ValueError("pass the target's attention mask as target_mask, not in generate")
        return tap.generate(target, target_mask, inject=inject, **generate)
    return tap.run(target, attention_mask=target_mask, inject=inject)
