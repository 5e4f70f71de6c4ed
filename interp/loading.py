"""Models by name for the interp commands: a zoo model (trained on first use) or a transformers
folder / hub id."""

from __future__ import annotations


def load_named_model(name: str):
    """``(model, tokenizer, zoo recipe or None)``: the zoo's model ``name`` when the zoo has a
    recipe of that name, else ``statetap.defaults.load_model(name)``."""
    from statetap import zoo
    from statetap.defaults import load_model

    try:
        recipe = zoo.resolve(name)
    except KeyError:
        model, tokenizer = load_model(name)
        return model, tokenizer, None
    model, tokenizer = zoo.load(recipe)
    return model, tokenizer, recipe
