"""The inputs of ``statetap extract``: a text file, JSONL, parquet and arrow files and saved
``datasets`` folders (read through the ``datasets`` library, files streamed), with
``--split``, ``--text-field``, ``--skip`` and ``--limit``; each gives the tensors of the same
texts given as a list, and a fingerprint of the input's bytes."""

from __future__ import annotations

import hashlib
import json

import datasets
import pytest
import torch
from _extract_models import build, random_texts, save

from statetap.cli import main
from statetap.extract import (
    ExtractConfig,
    dataset_source,
    extract,
    load_extraction,
    text_file_source,
)

TEXTS = random_texts([11, 4, 23, 7, 16, 2, 19], seed=4)
SETTINGS = dict(sites=["residual", "wkv"], positions=[0, -1], batch_size=3, shard_rows=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The saved model, and the extraction of TEXTS given as a list."""
    folder = tmp_path_factory.mktemp("inputs")
    model = build("rwkv", layers=2)
    save(model, folder / "model")
    from statetap.defaults import load_model

    model, tokenizer = load_model(str(folder / "model"))
    config = ExtractConfig(out=folder / "from-list", progress=False, **SETTINGS)
    extract(model, tokenizer, TEXTS, config, str(folder / "model"))
    return folder, load_extraction(folder / "from-list")[1]


def _cli(folder, out, *input_flags):
    flags = ["--sites", "residual", "wkv", "--positions", "0", "-1", "--batch-size", "3"]
    command = ["extract", "--model", str(folder / "model"), *input_flags, *flags]
    assert main([*command, "--shard-rows", "4", "--no-progress", "--out", str(out)]) == 0
    return load_extraction(out)


def _sha256(*paths):
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return f"sha256:{digest.hexdigest()}"


def _assert_same(tensors, expected, rows=None):
    rows = slice(None) if rows is None else rows
    assert set(tensors) == set(expected)
    for name, value in expected.items():
        assert torch.equal(tensors[name], value[rows]), name


def _table(**extra):
    return datasets.Dataset.from_dict({"n": list(range(len(TEXTS))), "text": TEXTS, **extra})


def test_jsonl(setup, tmp_path):
    folder, expected = setup
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    manifest, tensors = _cli(folder, tmp_path / "out", "--dataset", str(data))
    _assert_same(tensors, expected)
    assert manifest["input"]["fingerprint"] == _sha256(data)
    assert manifest["input"]["kind"] == "dataset" and manifest["input"]["text_field"] == "text"


def test_parquet_with_another_text_field(setup, tmp_path):
    folder, expected = setup
    data = tmp_path / "texts.parquet"
    _table(body=TEXTS).remove_columns("text").to_parquet(str(data))
    manifest, tensors = _cli(
        folder, tmp_path / "out", "--dataset", str(data), "--text-field", "body"
    )
    _assert_same(tensors, expected)
    assert manifest["input"]["fingerprint"] == _sha256(data)


def test_arrow_file_and_saved_folders(setup, tmp_path):
    folder, expected = setup
    _table().save_to_disk(str(tmp_path / "saved"))
    [arrow] = (tmp_path / "saved").glob("*.arrow")
    _, tensors = _cli(folder, tmp_path / "arrow", "--dataset", str(arrow))
    _assert_same(tensors, expected)
    _, tensors = _cli(folder, tmp_path / "folder", "--dataset", str(tmp_path / "saved"))
    _assert_same(tensors, expected)
    splits = datasets.DatasetDict({"train": _table().select([0]), "test": _table()})
    splits.save_to_disk(str(tmp_path / "splits"))
    flags = ("--dataset", str(tmp_path / "splits"), "--split", "test")
    manifest, tensors = _cli(folder, tmp_path / "split", *flags)
    _assert_same(tensors, expected)
    assert manifest["input"]["split"] == "test"
    with pytest.raises(ValueError, match=r"has splits \['test', 'train'\], not split='dev'"):
        dataset_source(str(tmp_path / "splits"), "dev")
    with pytest.raises(ValueError, match="holds one dataset, not splits"):
        dataset_source(str(tmp_path / "saved"), "test")


def test_skip_and_limit(setup, tmp_path):
    folder, expected = setup
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    flags = ("--text-file", str(tmp_path / "texts.txt"), "--skip", "2", "--limit", "3")
    manifest, tensors = _cli(folder, tmp_path / "out", *flags)
    assert tensors["row"].tolist() == [2, 3, 4]
    assert manifest["input"]["skip"] == 2 and manifest["input"]["limit"] == 3
    _assert_same(tensors, expected, rows=slice(2, 5))


def test_text_file_lines_fingerprint_and_blank_lines(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("first\n\nthird line\n")
    source = text_file_source(path)
    assert list(source.rows()) == [(0, "first"), (1, ""), (2, "third line")]
    assert source.total == 3 and source.fingerprint == _sha256(path)
    with pytest.raises(ValueError, match="is not a file"):
        text_file_source(tmp_path / "missing.txt")


def test_files_are_read_in_streaming_mode(tmp_path, monkeypatch):
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    calls = []
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    source = dataset_source(str(data))
    assert [kwargs["streaming"] for kwargs in calls] == [True]
    assert [text for _, text in source.rows()] == TEXTS and source.total == len(TEXTS)
    assert [text for _, text in source.rows(skip=5, limit=1)] == [TEXTS[5]]


def test_bad_dataset_input_is_refused(tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(
        ValueError, match=r"row 0 has no text_field 'text'; its columns are \['body'\]"
    ):
        list(dataset_source(str(data)).rows())
    data.write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(TypeError, match="row 0 'text' must be a str, got int"):
        list(dataset_source(str(data)).rows())
    (tmp_path / "texts.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match="expected a .jsonl, .json, .parquet, .arrow file"):
        dataset_source(str(tmp_path / "texts.csv"))
