"""Which model and tokenizer an artifact was made with, and the check that they are the same.

Steering vectors, tuned lenses and ELK results record :func:`model_identity` of the model they
were computed on: its class, the sha256 of its config (the fields that decide what it computes:
bookkeeping such as ``_name_or_path``, the transformers version or the dtype is left out, so a
copy of the same model in another folder or dtype matches) and, where the caller has it, the
tokenizer's class and the sha256 of its vocabulary and special tokens. Loading an artifact onto a
model compares the records with :func:`check_same`, which raises naming both sides of every
difference.

Example:
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> a = MambaForCausalLM(MambaConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1))
    >>> b = MambaForCausalLM(MambaConfig(vocab_size=16, hidden_size=8, num_hidden_layers=2))
    >>> check_same(model_identity(a), model_identity(a), "vectors")
    >>> check_same(model_identity(a), model_identity(b), "vectors")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: vectors do not match this run: config_sha256: ...
"""

from __future__ import annotations

import hashlib
import json

import torch

# config fields that describe where or how a model was loaded or run, not what it computes
BOOKKEEPING = frozenset(
    {
        "_name_or_path",
        "_commit_hash",
        "_attn_implementation_autoset",
        "_attn_implementation_internal",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "architectures",
        "use_cache",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "use_return_dict",
    }
)


def _sha256(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(model: torch.nn.Module, tokenizer=None) -> dict:
    """``model_class``, ``config_sha256`` (module docstring), ``name`` (the config's
    ``_name_or_path``, for messages only) and, with ``tokenizer``, ``tokenizer``:
    :func:`tokenizer_identity`.

    Raises:
        TypeError: ``model`` is no ``torch.nn.Module`` or has no transformers ``config``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(f"model ({type(model).__name__}) has no transformers config")
    fields = {k: v for k, v in config.to_dict().items() if k not in BOOKKEEPING}
    identity = dict(
        model_class=type(model).__name__,
        config_sha256=_sha256(fields),
        name=getattr(config, "_name_or_path", "") or type(model).__name__,
    )
    if tokenizer is not None:
        identity["tokenizer"] = tokenizer_identity(tokenizer)
    return identity


def tokenizer_identity(tokenizer) -> dict:
    """``class`` and ``vocab_sha256``: the sha256 of the vocabulary (token -> id) and of the
    special tokens' ids, what decides the ids a text becomes."""
    special = {
        name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")
    }
    return dict(
        **{"class": type(tokenizer).__name__},
        vocab_sha256=_sha256([sorted(tokenizer.get_vocab().items()), special]),
    )


def check_same(recorded: dict, current: dict, what: str) -> None:
    """Raise unless ``recorded`` (what ``what`` was made with) and ``current`` agree on every
    key both hold; ``name`` is not compared (a folder may move), but is named in the message.

    Raises:
        TypeError: ``recorded`` is not a dict (an artifact written before identities were
            recorded).
        ValueError: naming every key that differs with both values.
    """
    if not isinstance(recorded, dict):
        raise TypeError(
            f"{what} record no model identity (written by an older statetap?); recompute them"
        )
    wrong = [
        f"{key}: recorded {recorded[key]!r}, this run {current[key]!r}"
        for key in recorded
        if key != "name" and key in current and recorded[key] != current[key]
    ]
    if wrong:
        made, now = recorded.get("name", "?"), current.get("name", "?")
        raise ValueError(
            f"{what} do not match this run: {'; '.join(wrong)} (recorded model {made}, this "
            f"run's {now})"
        )
