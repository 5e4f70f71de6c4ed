"""When a hybrid's Mamba layers honour padding, and the refusal where they do not.

transformers' hybrid Mamba mixers zero the pad tokens' input (``apply_mask_to_padding_states``)
before the input projection and again after the convolution.  Without a bias in the input
projection a pad token then adds nothing to the convolution window or to the state, and a
left-padded row computes exactly what the row alone computes.  With a bias, the pad tokens'
projections (the bias itself) enter the convolution window that the first real tokens read:
the model's own outputs for a padded row differ from the row alone, so statetap refuses the
padded batch rather than report them as that row's.
"""

from __future__ import annotations

import torch


class BiasFreePadding:
    """Mixin for a hybrid adapter (before :class:`~statetap.adapters.hybrid.HybridMamba` in the
    bases): refuses padding when the Mamba mixers' ``in_proj`` has a bias, naming the config
    option :attr:`bias_option` that gave it one."""

    #: the config option that gives the Mamba mixers' input projection a bias
    bias_option: str = ""

    def check_padding(self, attention_mask: torch.Tensor | None, keeps_state: bool) -> None:
        super().check_padding(attention_mask, keeps_state)
        if attention_mask is None or bool(attention_mask.all()):
            return
        biased = [
            layer for layer in self.state_layers if self.mamba_mixer(layer).in_proj.bias is not None
        ]
        if biased:
            raise ValueError(
                f"this {type(self.model).__name__} has a bias in its Mamba input projection "
                f"(config.{self.bias_option}=True, layers {biased}): a pad token's projection "
                f"enters the convolution window of the first real tokens, so the model computes "
                f"a padded row differently from the row alone; run rows of equal length "
                f"(attention_mask=None) or one row at a time"
            )
