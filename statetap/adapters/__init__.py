"""The explicit table of supported model classes, and the adapter for a model.

statetap never guesses a model's structure: a model whose class is not in :data:`ADAPTERS`
is refused with the list of supported classes.
"""

from __future__ import annotations

from torch import nn

from statetap.adapters.base import Adapter
from statetap.adapters.delta_rule import KimiLinearAdapter, OlmoHybridAdapter, Qwen3NextAdapter
from statetap.adapters.hybrid import BambaAdapter, GraniteMoeHybridAdapter, NemotronHAdapter
from statetap.adapters.hybrid_falcon_h1 import FalconH1Adapter
from statetap.adapters.hybrid_jamba import JambaAdapter
from statetap.adapters.hybrid_zamba import Zamba2Adapter, ZambaAdapter
from statetap.adapters.mamba import FalconMambaAdapter, Mamba2Adapter, MambaAdapter
from statetap.adapters.mamba_ssm import MambaSsmAdapter
from statetap.adapters.rwkv import RwkvAdapter
from statetap.adapters.statetap_rwkv import StatetapRwkvAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    name: adapter
    for adapter in (
        MambaAdapter,
        FalconMambaAdapter,
        Mamba2Adapter,
        MambaSsmAdapter,
        RwkvAdapter,
        StatetapRwkvAdapter,
        BambaAdapter,
        GraniteMoeHybridAdapter,
        NemotronHAdapter,
        JambaAdapter,
        ZambaAdapter,
        Zamba2Adapter,
        FalconH1Adapter,
        Qwen3NextAdapter,
        OlmoHybridAdapter,
        KimiLinearAdapter,
    )
    for name in adapter.model_classes
}


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model``, chosen by its class name.

    Raises:
        TypeError: the model's class is not supported; the message lists those that are.
    """
    name = type(model).__name__
    if name not in ADAPTERS:
        raise TypeError(
            f"statetap has no adapter for {name}; supported model classes: "
            f"{', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[name](model)


__all__ = ["ADAPTERS", "Adapter", "adapter_for"]
