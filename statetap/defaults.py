"""The embedded defaults of the main job: a model and texts every machine has.

Until the model zoo lands, the default model is a small Mamba built from a config with a
fixed seed (random weights: it shows the machinery, not real behaviour) with transformers'
byte-level ``ByT5Tokenizer``, which needs no files.  The default texts are the paragraphs of
``pydoc_data.topics``, which every CPython install carries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "statetap-default-mamba"


def default_model() -> tuple[torch.nn.Module, object]:
    """A small ``MambaForCausalLM`` (seeded) and a byte-level tokenizer."""
    import torch
    from transformers import ByT5Tokenizer, MambaConfig, MambaForCausalLM

    tokenizer = ByT5Tokenizer()
    config = MambaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        state_size=16,
        num_hidden_layers=4,
        expand=2,
        conv_kernel=4,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = MambaForCausalLM(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    return model, tokenizer


def default_texts(limit: int = 256) -> list[str]:
    """Up to ``limit`` non-empty paragraphs of the Python documentation topics."""
    from pydoc_data.topics import topics

    paragraphs = (p.strip() for text in topics.values() for p in text.split("\n\n"))
    return [p for p in paragraphs if len(p) > 40][:limit]


def load_model(
    name: str,
    dtype: str | None = None,
    device_map: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, object]:
    """A causal LM (in eval mode) and its tokenizer from a local folder or a hub id
    (``from_pretrained``): ``dtype`` a torch dtype name (default: transformers'), ``device_map`` as
    transformers takes it (``"auto"``, ``"cpu"``, ``"cuda:0"``; needs accelerate), ``revision``
    a branch, tag or commit, ``trust_remote_code`` to run the checkpoint's own modeling code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import statetap.models  # noqa: F401  (registers statetap's RWKV-5/6/7 with the Auto classes)

    options = dict(revision=revision, trust_remote_code=trust_remote_code)
    if dtype is not None:
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(
                f"dtype must name a torch dtype (float32, bfloat16, ...), got {dtype!r}"
            )
        options["dtype"] = getattr(torch, dtype)
    if device_map is not None:
        options["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(name, **options).eval()
    tokenizer = AutoTokenizer.from_pretrained(
        name, revision=revision, trust_remote_code=trust_remote_code
    )
    return model, tokenizer
