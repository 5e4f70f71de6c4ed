"""Reading an extraction back: :func:`open_extraction` reads rows lazily (slices of the
memory-mapped shards), in input order across shards, in batches, as a ``torch`` Dataset and
as a ``datasets.Dataset``; ``statetap extract info`` prints the manifest as a table."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from _extract_models import TOKENIZER, build, random_texts
from safetensors.torch import load_file

import statetap.extract.reader as reader_module
from statetap.cli import main
from statetap.extract import ExtractConfig, extract, open_extraction

TEXTS = random_texts([5, 12, 3, 9, 1, 14, 7, 4], seed=6)


@pytest.fixture(scope="module", params=[[0, -1], "0:64"], ids=["fixed", "ragged"])
def extraction(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("reader")
    config = ExtractConfig(
        out=out, positions=request.param, batch_size=2, shard_rows=3, progress=False
    )
    extract(build("mamba", layers=2), TOKENIZER, TEXTS, config, "m")
    return out


def _raw_rows(out) -> list[dict[str, torch.Tensor]]:
    """Every row, read eagerly from the shard files with safetensors' ``load_file``."""
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for shard in manifest["shards"]:
        tensors = load_file(out / shard["file"])
        for i in range(len(tensors["row"])):
            if "offsets" in tensors:
                a, b = int(tensors["offsets"][i]), int(tensors["offsets"][i + 1])
                rows.append({k: v[a:b] for k, v in tensors.items() if k not in ("row", "offsets")})
            else:
                rows.append({k: v[i] for k, v in tensors.items() if k != "row"})
            rows[-1]["row"] = tensors["row"][i]
    return rows


def _equal(got: dict, expected: dict):
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_rows_by_index_equal_the_shard_files(extraction):
    rows = open_extraction(extraction)
    raw = _raw_rows(extraction)
    assert len(rows) == len(raw) == len(TEXTS)
    for index, expected in enumerate(raw):
        _equal(rows[index], expected)
        assert int(rows[index]["row"]) == index
    _equal(rows[-1], raw[-1])
    with pytest.raises(IndexError, match="row 8 is out of range for an extraction of 8 rows"):
        rows[8]
    with pytest.raises(TypeError, match="index an extraction with an int row"):
        rows[1:3]


def test_batches_cross_shards_in_input_order(extraction):
    rows = open_extraction(extraction)
    raw = _raw_rows(extraction)
    batches = list(rows.batches(3))
    assert [len(batch["row"]) for batch in batches] == [3, 3, 2]
    span = rows.rows(2, 7)  # shards hold rows 0-2, 3-5, 6-7
    assert span["row"].tolist() == [2, 3, 4, 5, 6]
    for name in rows.names:
        if rows.ragged:
            flat = torch.cat([raw[i][name] for i in range(2, 7)])
            counts = [len(raw[i]["positions"]) for i in range(2, 7)]
            assert span["offsets"].diff().tolist() == counts
        else:
            flat = torch.stack([raw[i][name] for i in range(2, 7)])
        assert torch.equal(span[name], flat), name
    with pytest.raises(ValueError, match="size must be a positive int"):
        list(rows.batches(0))


def test_a_torch_dataloader_over_the_rows(extraction):
    rows = open_extraction(extraction)
    assert isinstance(rows, torch.utils.data.Dataset)
    loaded = list(torch.utils.data.DataLoader(rows, batch_size=None))
    for index, item in enumerate(loaded):
        _equal(item, rows[index])
    if not rows.ragged:
        first = next(iter(torch.utils.data.DataLoader(rows, batch_size=4)))
        assert torch.equal(first["residual.1"], rows.rows(0, 4)["residual.1"])


def test_a_pickled_copy_reopens_the_shards(extraction):
    rows = open_extraction(extraction)
    copy = pickle.loads(pickle.dumps(rows))
    assert len(copy) == len(rows)
    _equal(copy[3], rows[3])


def test_to_datasets_holds_the_same_values(extraction, tmp_path):
    rows = open_extraction(extraction)
    table = rows.to_datasets(cache_dir=tmp_path)
    assert len(table) == len(rows) and set(table.column_names) == set(rows[0])
    for index in (0, 4, len(rows) - 1):
        for name, value in rows[index].items():
            assert torch.equal(torch.tensor(table[index][name], dtype=value.dtype), value), name


def test_reading_a_row_reads_slices_not_whole_tensors(extraction, monkeypatch):
    whole = []
    real_open = reader_module.safe_open

    class Recording:
        def __init__(self, *args, **kwargs):
            self.handle = real_open(*args, **kwargs)

        def get_tensor(self, name):
            whole.append(name)
            return self.handle.get_tensor(name)

        def get_slice(self, name):
            return self.handle.get_slice(name)

    monkeypatch.setattr(reader_module, "safe_open", Recording)
    rows = open_extraction(extraction)
    rows[5], rows.rows(1, 6), list(rows.batches(4))
    assert set(whole) <= {"offsets"}  # the row offsets of a ragged shard, nothing else


def test_an_unfinished_extraction_is_refused(extraction, tmp_path):
    manifest = json.loads((extraction / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest | {"complete": False}))
    finished = r"did not finish \(3 shard\(s\) written\); run the same command again .*partial=True"
    with pytest.raises(ValueError, match=finished):
        open_extraction(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a statetap extraction"):
        open_extraction(tmp_path / "nothing")


def test_extract_info_prints_the_manifest_as_a_table(extraction, capsys):
    assert main(["extract", "info", str(extraction)]) == 0
    lines = capsys.readouterr().out.splitlines()
    manifest = json.loads((extraction / "manifest.json").read_text())
    table = dict(line.split(None, 1) for line in lines[2 : lines.index("")])
    assert json.loads(table["config.positions"]) == manifest["config"]["positions"]
    assert json.loads(table["input.fingerprint"]) == manifest["input"]["fingerprint"]
    assert json.loads(table["versions.torch"]) == torch.__version__
    assert int(table["rows"]) == len(TEXTS) and int(table["shards"]) == 3
    assert any(line.split()[:2] == ["ssm.1", "[32,"] for line in lines)
    assert any(line.startswith("shard-00002.safetensors") for line in lines)


def test_to_datasets_is_quiet_unless_asked_and_restores_the_setting(extraction, tmp_path, capfd):
    import datasets

    rows = open_extraction(extraction)
    datasets.enable_progress_bars()
    rows.to_datasets(cache_dir=tmp_path / "quiet")
    assert "Generating" not in capfd.readouterr().err
    assert not datasets.are_progress_bars_disabled()
    rows.to_datasets(cache_dir=tmp_path / "loud", progress=True)
    assert "Generating" in capfd.readouterr().err
