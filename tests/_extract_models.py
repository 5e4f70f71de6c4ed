"""Tiny seeded models and texts for the ``statetap extract`` tests, and the reference they
are checked against: each text run alone (no padding, no batching) through ``Tap.run``."""

from __future__ import annotations

import torch
from transformers import ByT5Tokenizer, MambaConfig, MambaForCausalLM, RwkvConfig, RwkvForCausalLM

import statetap

TOKENIZER = ByT5Tokenizer()


def random_texts(lengths: list[int], seed: int) -> list[str]:
    """Printable ASCII texts of the given lengths (one byte-level token per character)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        "".join(chr(c) for c in torch.randint(32, 127, (n,), generator=generator).tolist())
        for n in lengths
    ]


def build(kind: str, layers: int = 3, seed: int = 7):
    """An eval-mode ``RwkvForCausalLM`` (``kind="rwkv"``) or ``MambaForCausalLM`` (``"mamba"``)."""
    torch.manual_seed(seed)
    vocab = len(TOKENIZER)
    if kind == "rwkv":
        config = RwkvConfig(
            vocab_size=vocab,
            hidden_size=24,
            num_hidden_layers=layers,
            attention_hidden_size=24,
            intermediate_size=40,
        )
        return RwkvForCausalLM(config).eval()
    config = MambaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=layers, state_size=4)
    return MambaForCausalLM(config).eval()


def save(model, folder):
    model.save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    return folder


def token_ids(text: str) -> torch.Tensor:
    """``[1, L]`` ids of one text, as the extraction tokenises it (no special tokens)."""
    return torch.tensor([TOKENIZER(text, add_special_tokens=False)["input_ids"]])


def alone(tap, text: str, sites, layers, positions) -> dict[str, torch.Tensor]:
    """``{"{site}.{layer}": [P, *shape]}`` for ``text`` run alone through ``tap.run``;
    ``positions`` a list of ints, or a ``range`` of token indices."""
    ids = token_ids(text)
    spec = torch.tensor(list(positions)) if isinstance(positions, range) else list(positions)
    result = tap.run(ids, emit=[statetap.Emit(site, list(layers), spec) for site in sites])
    return {f"{site}.{layer}": value[0] for (site, layer), value in result.activations.items()}
