"""``statetap extract``: shards equal an in-memory run, and a failed run leaves no partial shard."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import ByT5Tokenizer, RwkvConfig, RwkvForCausalLM

import statetap
import statetap.extract as extract_module
from statetap.cli import main
from statetap.extract import ExtractConfig, extract, load_extraction

TEXTS = [
    "state space models carry a state",
    "x",
    "RWKV mixes tokens with a decaying sum",
    "the quick brown fox jumps over the lazy dog",
    "a",
    "recurrent language models",
    "tuned lens, steering, probes",
]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny RWKV-4 and a byte-level tokenizer, saved the way a checkpoint is."""
    torch.manual_seed(7)
    tokenizer = ByT5Tokenizer()
    model = RwkvForCausalLM(
        RwkvConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            attention_hidden_size=32,
            intermediate_size=64,
        )
    ).eval()
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def _in_memory(model, tokenizer, texts, batch_size, sites, layers, positions):
    """The same extraction, one tap.run per batch, kept in memory."""
    tap = statetap.attach(model)
    tokenizer.padding_side = "right"
    collected: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        )
        result = tap.run(
            encoded["input_ids"],
            encoded["attention_mask"],
            emit=[statetap.Emit(site, layers, positions) for site in sites],
        )
        for (site, layer), tensor in result.activations.items():
            collected.setdefault(f"{site}.{layer}", []).append(tensor)
    return {name: torch.cat(parts) for name, parts in collected.items()}


def test_cli_shards_reload_to_the_in_memory_tensors(saved_model, tmp_path):
    folder, model, tokenizer = saved_model
    text_file = tmp_path / "texts.txt"
    text_file.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "run"
    code = main(
        [
            "extract",
            "--model",
            str(folder),
            "--text-file",
            str(text_file),
            "--out",
            str(out),
            "--sites",
            "residual",
            "state",
            "--positions",
            "0",
            "-1",
            "--batch-size",
            "3",
            "--shard-rows",
            "3",
        ]
    )
    assert code == 0
    manifest, tensors = load_extraction(out)
    assert manifest["model"] == str(folder) and manifest["model_class"] == "RwkvForCausalLM"
    assert [shard["rows"] for shard in manifest["shards"]] == [[0, 3], [3, 6], [6, 7]]
    expected = _in_memory(model, tokenizer, TEXTS, 3, ["residual", "state"], [0, 1], [0, -1])
    assert set(tensors) == set(expected) | {"row", "positions"}
    for name, value in expected.items():
        assert torch.equal(tensors[name], value), name
    assert tensors["row"].tolist() == list(range(len(TEXTS)))
    lengths = torch.tensor([len(t.encode()) for t in TEXTS])
    assert torch.equal(
        tensors["positions"][:, 1], lengths - 1
    )  # right padding: -1 is the last byte


def test_a_failed_shard_leaves_nothing_partial(saved_model, tmp_path, monkeypatch):
    _, model, tokenizer = saved_model
    real_save = extract_module.save_file
    calls = []

    def save_then_die(tensors, path):
        calls.append(path)
        if len(calls) == 2:  # the second shard: write half a file, then the process "dies"
            with open(path, "wb") as handle:
                handle.write(b"partial")
            raise KeyboardInterrupt
        real_save(tensors, path)

    monkeypatch.setattr(extract_module, "save_file", save_then_die)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        extract(model, tokenizer, TEXTS, ExtractConfig(out=out, batch_size=2, shard_rows=2), "m")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.safetensors"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and [s["file"] for s in manifest["shards"]] == [
        "shard-00000.safetensors"
    ]
    with pytest.raises(ValueError, match="did not finish"):
        load_extraction(out)
    with pytest.raises(FileExistsError, match="choose a new output folder"):
        extract(model, tokenizer, TEXTS, ExtractConfig(out=out), "m")


def test_config_is_checked(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        ExtractConfig(out=tmp_path, dtype="float8")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ExtractConfig(out=tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="positions must be a list of ints"):
        ExtractConfig(out=tmp_path, positions="all")


def test_texts_cut_at_max_length_are_counted_recorded_and_warned_about(saved_model, tmp_path):
    _, model, tokenizer = saved_model
    max_length = 10
    long = [t for t in TEXTS if len(t.encode()) > max_length]
    assert 0 < len(long) < len(TEXTS)
    config = ExtractConfig(out=tmp_path / "run", sites=["residual"], batch_size=3, max_length=10)
    with pytest.warns(UserWarning, match=rf"{len(long)} of {len(TEXTS)} texts are longer than "):
        extract(model, tokenizer, TEXTS, config, "m")
    manifest, tensors = load_extraction(tmp_path / "run")
    assert manifest["truncated_texts"] == len(long)
    lengths = torch.tensor([min(len(t.encode()), max_length) for t in TEXTS])
    assert torch.equal(tensors["positions"][:, 0], lengths - 1)
    cut = [t.encode()[:max_length].decode() for t in TEXTS]
    expected = _in_memory(model, tokenizer, cut, 3, ["residual"], [0, 1], [-1])
    for name, value in expected.items():
        assert torch.equal(tensors[name], value), name
