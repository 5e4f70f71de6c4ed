"""``statetap extract``: shards equal each text run alone, a failed run leaves no partial shard
and resumes, settings are checked, cut and empty texts are counted, versions recorded."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from _extract_models import TOKENIZER, alone, build, random_texts, save

import statetap
import statetap.extract.shards as shards_module
from statetap.cli import main
from statetap.extract import ExtractConfig, extract, load_extraction

TEXTS = random_texts([30, 1, 37, 43, 2, 25, 28], seed=3)


@pytest.fixture(scope="module")
def rwkv():
    return build("rwkv")


def test_cli_shards_reload_to_each_text_run_alone(rwkv, tmp_path, capsys):
    folder = save(rwkv, tmp_path / "model")
    text_file = tmp_path / "texts.txt"
    text_file.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "run"
    arguments = ["extract", "--model", str(folder), "--text-file", str(text_file)]
    arguments += ["--out", str(out), "--positions", "0", "-1", "--batch-size", "2"]
    assert main([*arguments, "--shard-rows", "3"]) == 0
    captured = capsys.readouterr()
    assert "tok/s" in captured.err  # the progress bar
    manifest, tensors = load_extraction(out)
    assert manifest["config"]["model"] == str(folder)
    assert manifest["config"]["model_class"] == "RwkvForCausalLM"
    assert [shard["input_rows"] for shard in manifest["shards"]] == [[0, 3], [3, 6], [6, 7]]
    assert tensors["row"].tolist() == list(range(len(TEXTS)))
    lengths = torch.tensor([len(t) for t in TEXTS])
    assert torch.equal(tensors["positions"], torch.stack([lengths * 0, lengths - 1], 1))
    tap = statetap.attach(rwkv)
    for row, text in enumerate(TEXTS):
        expected = alone(tap, text, ["residual", "state"], [0, 1, 2], [0, -1])
        assert set(tensors) == set(expected) | {"row", "positions"}
        for name, value in expected.items():
            torch.testing.assert_close(tensors[name][row], value, msg=name)


def test_a_failed_shard_leaves_nothing_partial_and_the_rerun_resumes(rwkv, tmp_path, monkeypatch):
    real_save = shards_module.save_file
    calls = []

    def save_then_die(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # the second shard: write half a file, then the process "dies"
            with open(path, "wb") as handle:
                handle.write(b"partial")
            raise KeyboardInterrupt
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(shards_module, "save_file", save_then_die)
    out = tmp_path / "run"
    config = ExtractConfig(out=out, batch_size=2, shard_rows=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        extract(rwkv, TOKENIZER, TEXTS, config, "m")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.safetensors"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"]
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.safetensors"]
    with pytest.raises(ValueError, match="did not finish"):
        load_extraction(out)
    first = (out / "shard-00000.safetensors").stat()
    extract(rwkv, TOKENIZER, TEXTS, config, "m")
    assert len(calls) == 2 + 3  # the rerun wrote the three missing shards only
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first.st_mtime_ns
    monkeypatch.setattr(shards_module, "save_file", real_save)
    uninterrupted = tmp_path / "uninterrupted"
    extract(rwkv, TOKENIZER, TEXTS, ExtractConfig(**{**vars(config), "out": uninterrupted}), "m")
    resumed, reference = load_extraction(out)[1], load_extraction(uninterrupted)[1]
    assert set(resumed) == set(reference)
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(dtype="float8"), "dtype must be one of"),
        (dict(batch_size=0), "batch_size must be a positive int"),
        (dict(positions="every"), "positions must be ints, 'all' or a span"),
        (dict(positions="5:5"), "0 <= start < stop"),
        (dict(positions="-3:"), "0 <= start < stop"),
        (dict(positions=[]), "positions must be a non-empty list"),
        (dict(max_tokens=10, max_length=20), "max_tokens must be an int >= max_length=20"),
        (dict(sites="residual"), "sites must be a non-empty list"),
    ],
)
def test_config_is_checked(tmp_path, changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ExtractConfig(out=tmp_path, **changes)


def test_bad_skip_limit_and_layers_are_refused(rwkv, tmp_path):
    config = ExtractConfig(out=tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="skip must be an int >= 0"):
        extract(rwkv, TOKENIZER, TEXTS, config, "m", skip=-1)
    with pytest.raises(ValueError, match="limit must be a positive int"):
        extract(rwkv, TOKENIZER, TEXTS, config, "m", limit=0)
    with pytest.raises(ValueError, match=r"layers \[3\] are out of range"):
        extract(rwkv, TOKENIZER, TEXTS, ExtractConfig(out=tmp_path / "r", layers=[0, 3]), "m")
    with pytest.raises(ValueError, match="no texts to extract from"):
        extract(rwkv, TOKENIZER, TEXTS, ExtractConfig(out=tmp_path / "r2"), "m", skip=len(TEXTS))


def test_texts_cut_at_max_length_are_counted_recorded_and_warned_about(rwkv, tmp_path):
    max_length = 10
    long = [t for t in TEXTS if len(t) > max_length]
    assert 0 < len(long) < len(TEXTS)
    config = ExtractConfig(
        out=tmp_path / "run", sites=["residual"], batch_size=3, max_length=10, progress=False
    )
    with pytest.warns(UserWarning, match=rf"{len(long)} of {len(TEXTS)} texts are longer than "):
        extract(rwkv, TOKENIZER, TEXTS, config, "m")
    manifest, tensors = load_extraction(tmp_path / "run")
    assert manifest["truncated_texts"] == len(long)
    assert torch.equal(
        tensors["positions"][:, 0], torch.tensor([min(len(t), 10) - 1 for t in TEXTS])
    )
    tap = statetap.attach(rwkv)
    for row, text in enumerate(TEXTS):
        for name, value in alone(tap, text[:max_length], ["residual"], [0, 1, 2], [-1]).items():
            torch.testing.assert_close(tensors[name][row], value, msg=name)


def test_texts_too_short_for_the_positions_are_left_out_or_named(rwkv, tmp_path):
    config = ExtractConfig(out=tmp_path / "skip", positions=[2, -1], progress=False)
    with pytest.warns(UserWarning, match=r"2 of 7 texts are too short for positions \[2, -1\]"):
        manifest = extract(rwkv, TOKENIZER, TEXTS, config, "m")
    assert manifest.short_texts == 2 and manifest.rows == 5
    assert load_extraction(tmp_path / "skip")[1]["row"].tolist() == [0, 2, 3, 5, 6]
    config = ExtractConfig(
        out=tmp_path / "error", positions=[2, -1], short_texts="error", progress=False
    )
    with pytest.raises(
        ValueError, match=r"need texts of at least 3 tokens, but input rows \[1, 4\]"
    ):
        extract(rwkv, TOKENIZER, TEXTS, config, "m")
    with pytest.raises(ValueError, match="max_length=2 cuts every text shorter"):
        ExtractConfig(out=tmp_path, positions=[2, -1], max_length=2)


def test_empty_texts_are_counted_left_out_and_warned_about(rwkv, tmp_path):
    texts = ["", TEXTS[0], "", TEXTS[2]]
    config = ExtractConfig(out=tmp_path / "run", sites=["wkv"], progress=False)
    with pytest.warns(UserWarning, match="2 of 4 texts have no tokens and were left out"):
        extract(rwkv, TOKENIZER, texts, config, "m")
    manifest, tensors = load_extraction(tmp_path / "run")
    assert manifest["empty_texts"] == 2 and manifest["rows"] == 2
    assert tensors["row"].tolist() == [1, 3]


def test_the_manifest_records_the_versions(rwkv, tmp_path):
    from statetap import kernels
    from statetap.kernels._backend import choose_backend

    manifest = extract(rwkv, TOKENIZER, TEXTS[:2], ExtractConfig(out=tmp_path, progress=False), "m")
    assert manifest.versions["statetap"] == statetap.__version__
    assert manifest.versions["torch"] == torch.__version__
    assert manifest.versions["transformers"] == transformers.__version__
    cpu = torch.device("cpu")
    assert manifest.versions["kernel_backends"]["wkv4"] == choose_backend(
        "wkv4", cpu, kernels.wkv4.implementations
    )
    assert manifest.input["fingerprint"].startswith("sha256:")
