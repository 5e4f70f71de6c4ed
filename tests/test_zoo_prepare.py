"""Training several zoo models in parallel processes: the same weights as one at a time."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from statetap import zoo
from statetap.zoo import train as zoo_train
from statetap.zoo.prepare import prepare


def test_parallel_training_gives_the_weights_of_in_process_training(tmp_path, monkeypatch):
    monkeypatch.setenv("STATETAP_CACHE", str(tmp_path / "cache"))
    recipes = [zoo.resolve("quirky-rwkv4-short"), zoo.resolve("text-mamba-short")]
    folders = prepare(recipes, processes=2, progress=False)
    assert set(folders) == {r.name for r in recipes}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # training pins one thread whatever the caller runs on
    try:
        for recipe in recipes:
            expected = zoo_train.train(recipe, progress=False).model.state_dict()
            assert torch.get_num_threads() == 2
            saved = load_file(folders[recipe.name] / "model.safetensors")
            assert saved.keys() <= expected.keys()
            assert all(torch.equal(saved[k], expected[k]) for k in saved)
    finally:
        torch.set_num_threads(threads)
    # a second call finds everything cached and trains nothing
    monkeypatch.setattr(zoo_train, "train", lambda *a, **k: pytest.fail("trained again"))
    assert prepare(recipes, processes=2, progress=False) == folders


def test_prepare_refuses_a_bad_process_count():
    with pytest.raises(ValueError, match="processes"):
        prepare([zoo.resolve("text-mamba-short")], processes=0)
