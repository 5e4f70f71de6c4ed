"""Extraction never loses finished work and never claims what it did not do: a text too short
for the positions is left out and counted, a failed run's shards are readable and a run that
wrote none blocks nothing, batching settings never block a resume, every shard's SHA-256 is
checked on resume (a damaged shard is recomputed, and said) and on read (the file is named), a
damaged manifest is named with the way out, stored rows map to input rows, and the output size
is estimated before the first batch."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from _extract_models import TOKENIZER, alone, build, random_texts, save
from safetensors.torch import load, load_file

import statetap
import statetap.extract.run as run_module
import statetap.extract.shards as shards_module
from statetap.cli import main
from statetap.extract import (
    ExtractConfig,
    dataset_source,
    extract,
    load_extraction,
    open_extraction,
)

TEXTS = random_texts([9, 14, 6, 11, 1, 8, 12], seed=21)  # text 4 is one token long
LAYERS = [0, 1, 2]


@pytest.fixture(scope="module")
def rwkv():
    return build("rwkv")


def _config(out, **changes):
    settings = dict(positions=[0, -2, -1], batch_size=2, shard_rows=2, progress=False)
    return ExtractConfig(out=out, **(settings | changes))


@pytest.fixture(scope="module")
def finished(rwkv, tmp_path_factory):
    """A complete extraction of every text but the one-token one, and its shards' bytes."""
    out = tmp_path_factory.mktemp("finished")
    texts = TEXTS[:4] + TEXTS[5:]
    extract(rwkv, TOKENIZER, texts, _config(out), "m")
    return out, texts, {p.name: p.read_bytes() for p in out.glob("shard-*.safetensors")}


def _same_tensors(path, original: bytes) -> None:
    """The shard at ``path`` holds the tensors of the shard file ``original`` (the header's
    metadata order may differ between writes)."""
    expected, got = load(original), load_file(path)
    assert set(got) == set(expected)
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def _copy(finished, tmp_path):
    out, texts, shards = finished
    for name, data in shards.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "manifest.json").write_bytes((out / "manifest.json").read_bytes())
    return tmp_path, texts


def _counting_saves(monkeypatch) -> list:
    """Record every shard write from now on."""
    real, calls = shards_module.save_file, []

    def save(tensors, path, metadata=None):
        calls.append(path)
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(shards_module, "save_file", save)
    return calls


def test_a_one_token_text_is_left_out_counted_and_the_rerun_finishes(rwkv, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"input rows \[4\] have fewer; .*--short-texts skip"):
        extract(rwkv, TOKENIZER, TEXTS, _config(out, short_texts="error"), "m")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    assert sorted(kept) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    with pytest.warns(UserWarning, match=r"1 of 7 texts are too short for positions \[0, -2, -1\]"):
        manifest = extract(rwkv, TOKENIZER, TEXTS, _config(out), "m")  # the same --out
    assert manifest.complete and manifest.short_texts == 1 and manifest.rows == 6
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # finished work kept
    assert manifest.shards[2]["left_out"] == {"empty": [], "short": [4]}

    rows = open_extraction(out)
    with pytest.raises(KeyError, match="input row 4 was left out.*too short for the positions"):
        rows.index_of(4)
    tap = statetap.attach(rwkv)
    for input_row, text in enumerate(TEXTS):
        if input_row == 4:
            continue
        row = rows[rows.index_of(input_row)]
        assert int(row["row"]) == input_row
        for name, value in alone(tap, text, ["residual", "state"], LAYERS, [0, -2, -1]).items():
            torch.testing.assert_close(row[name], value, msg=name)


def test_empty_texts_are_mapped_by_index_of(rwkv, tmp_path):
    texts = [TEXTS[0], "", TEXTS[1], "", TEXTS[2]]
    with pytest.warns(UserWarning, match="stored row i is not input row i.*index_of"):
        extract(rwkv, TOKENIZER, texts, _config(tmp_path, shard_rows=3), "m")
    rows = open_extraction(tmp_path)
    assert len(rows) == 3
    assert [rows.index_of(k) for k in (0, 2, 4)] == [0, 1, 2]
    assert [int(rows[rows.index_of(k)]["row"]) for k in (0, 2, 4)] == [0, 2, 4]
    for empty in (1, 3):
        with pytest.raises(KeyError, match=f"input row {empty} was left out.*has no tokens"):
            rows.index_of(empty)
    with pytest.raises(KeyError, match="input row 5 has no row.*outside the extracted input"):
        rows.index_of(5)


def test_a_failed_run_that_wrote_no_shard_does_not_block_the_corrected_command(rwkv, tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS[:4]))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="has no text_field 'body'"):
        extract(rwkv, TOKENIZER, dataset_source(str(data), text_field="body"), _config(out), "m")
    assert not list(out.glob("shard-*"))
    with pytest.warns(UserWarning, match=r"earlier run that wrote no shard.*'body' -> 'text'"):
        manifest = extract(rwkv, TOKENIZER, dataset_source(str(data)), _config(out), "m")
    assert manifest.complete and manifest.rows == 4


def test_batching_does_not_block_a_resume_and_partial_reads_the_finished_shards(
    rwkv, tmp_path, monkeypatch
):
    real_save, calls = shards_module.save_file, []

    def save_then_die(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(shards_module, "save_file", save_then_die)
    out, texts = tmp_path / "run", TEXTS[:4] + TEXTS[5:]
    with pytest.raises(KeyboardInterrupt):
        extract(rwkv, TOKENIZER, texts, _config(out), "m")
    monkeypatch.setattr(shards_module, "save_file", real_save)
    with pytest.raises(ValueError, match=r"did not finish \(1 shard\(s\).*partial=True"):
        open_extraction(out)
    reference = tmp_path / "reference"
    extract(rwkv, TOKENIZER, texts, _config(reference), "m")
    whole = open_extraction(reference)
    partial = open_extraction(out, partial=True)
    assert len(partial) == 2 and partial.index_of(1) == 1
    with pytest.raises(KeyError, match="input row 2 has no row.*a window this partial run"):
        partial.index_of(2)
    for row in range(2):
        for name, value in whole[row].items():
            assert torch.equal(partial[row][name], value), name

    other = dict(batch_size=3, max_tokens=300, progress=True)
    manifest = extract(rwkv, TOKENIZER, texts, _config(out, **other), "m")
    assert manifest.complete
    assert [shard["batch_size"] for shard in manifest.shards] == [2, 3, 3]
    assert [shard["max_tokens"] for shard in manifest.shards] == [None, 300, 300]
    resumed = open_extraction(out)
    for row in range(len(texts)):
        for name, value in whole[row].items():
            torch.testing.assert_close(resumed[row][name], value, msg=name)


def test_every_shard_sha256_is_in_the_manifest_and_a_flipped_byte_is_caught(
    rwkv, finished, tmp_path, monkeypatch
):
    out, texts = _copy(finished, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    for shard in manifest["shards"]:
        data = (out / shard["file"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()
    target = out / "shard-00001.safetensors"
    original = target.read_bytes()
    damaged = bytearray(original)
    for offset in range(len(damaged) - 400, len(damaged)):  # tensor data, not the header
        damaged[offset] ^= 0x55
    target.write_bytes(bytes(damaged))
    rows = open_extraction(out)
    rows[0]  # shard 0 is intact
    with pytest.raises(ValueError, match=f"{target}.*damaged.*verify=False"):
        rows[2]
    got = open_extraction(out, verify=False).rows(2, 4)  # the opt-out reads what is there
    expected = open_extraction(finished[0]).rows(2, 4)
    assert any(not torch.equal(got[name], expected[name]) for name in expected)

    calls = _counting_saves(monkeypatch)
    with pytest.warns(UserWarning, match=r"\['shard-00001.safetensors'\] did not match"):
        again = extract(rwkv, TOKENIZER, texts, _config(out), "m")
    assert len(calls) == 1  # that shard only
    assert again.last_run["recomputed"] == ["shard-00001.safetensors"]
    _same_tensors(target, original)


def test_a_truncated_shard_is_named_on_read_and_recomputed_by_the_rerun(rwkv, finished, tmp_path):
    out, texts = _copy(finished, tmp_path)
    target = out / "shard-00002.safetensors"
    original = target.read_bytes()
    target.write_bytes(original[: len(original) // 2])
    with pytest.raises(ValueError, match=f"{target} is damaged .*run the same extract command"):
        open_extraction(out, verify=False)[4]
    with pytest.raises(ValueError, match=f"{target} does not match the SHA-256"):
        open_extraction(out)[4]
    with pytest.warns(UserWarning, match="shard-00002.safetensors'\\] did not match"):
        manifest = extract(rwkv, TOKENIZER, texts, _config(out), "m")
    assert manifest.last_run == {
        "written": ["shard-00002.safetensors"],
        "reused": 2,
        "recomputed": ["shard-00002.safetensors"],
    }
    _same_tensors(target, original)


def test_the_command_says_what_it_wrote_recomputed_and_kept(rwkv, tmp_path, capsys):
    save(rwkv, tmp_path / "model")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS[:6]) + "\n")
    out = tmp_path / "run"
    argv = [
        "extract",
        "--model",
        str(tmp_path / "model"),
        "--text-file",
        str(tmp_path / "texts.txt"),
    ]
    argv += ["--positions", "0", "-1", "--shard-rows", "2", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert "wrote 3 shard(s); " in capsys.readouterr().out
    target = out / "shard-00001.safetensors"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.warns(UserWarning, match="shard-00001.safetensors'\\] did not match"):
        assert main(argv) == 0
    said = capsys.readouterr().out
    assert (
        "wrote 1 shard(s) (1 recomputed: shard-00001.safetensors), kept 2 checked shard(s); "
        in said
    )
    assert main(argv) == 0
    assert "wrote 0 shard(s), kept 3 checked shard(s); " in capsys.readouterr().out


def test_a_truncated_manifest_is_named_with_the_way_out_and_the_rerun_rebuilds_it(
    rwkv, finished, tmp_path, monkeypatch, capsys
):
    out, texts = _copy(finished, tmp_path)
    path = out / "manifest.json"
    path.write_text(path.read_text()[:200])
    with pytest.raises(ValueError, match=f"{path} is damaged .*run the same extract command") as e:
        open_extraction(out)
    assert not isinstance(e.value, json.JSONDecodeError)
    assert main(["extract", "info", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"statetap extract info: error: {path} is damaged") and len(err) == 2
    calls = _counting_saves(monkeypatch)
    with pytest.warns(UserWarning, match="is damaged.*Rebuilding it now"):
        manifest = extract(rwkv, TOKENIZER, texts, _config(out), "m")
    assert calls == [] and manifest.complete and manifest.last_run["reused"] == 3
    _, got = load_extraction(out)
    _, expected = load_extraction(finished[0])
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def _tensor_bytes(out) -> int:
    return sum(
        value.numel() * value.element_size()
        for path in out.glob("shard-*.safetensors")
        for value in load_file(path).values()
    )


@pytest.mark.parametrize("positions", [[0, -1], "0:64"], ids=["fixed", "span"])
def test_the_output_size_is_estimated_before_the_first_batch(rwkv, tmp_path, capsys, positions):
    texts = TEXTS[:4]
    manifest = extract(
        rwkv, TOKENIZER, texts, _config(tmp_path, positions=positions, shard_rows=4), "m"
    )
    written = _tensor_bytes(tmp_path)
    offsets_end = 0 if positions == [0, -1] else 8  # the span's final offset, one per shard
    assert manifest.estimated_bytes == written - offsets_end
    said = capsys.readouterr().err
    assert f"statetap extract: output about {written / 1000:.1f} kB for 4 texts" in said
    assert manifest.bytes == sum(p.stat().st_size for p in tmp_path.glob("shard-*"))


def test_an_output_over_the_budget_is_refused_before_the_first_batch(rwkv, tmp_path, monkeypatch):
    def no_passes(*args, **kwargs):
        raise AssertionError("a batch ran")

    monkeypatch.setattr(run_module, "run_batch", no_passes)
    config = _config(tmp_path / "run", max_bytes=1000)
    with pytest.raises(ValueError, match=r"estimated at .* kB for 7 texts .*over max_bytes=1000"):
        extract(rwkv, TOKENIZER, TEXTS, config, "m")
    assert not (tmp_path / "run").exists()


def test_positions_all_on_state_sites_is_refused_by_the_api_and_the_cli_alike(
    rwkv, tmp_path, capsys
):
    message = "positions='all' is for the residual and mixer sites (as in Tap.run)"
    with pytest.raises(ValueError, match=r"is for the residual and mixer sites"):
        statetap.attach(rwkv).run(torch.tensor([[1, 2]]), emit=[statetap.Emit("wkv", 0, "all")])
    with pytest.raises(ValueError) as refused:
        ExtractConfig(out=tmp_path, sites=["residual", "state"], positions="all")
    assert message in str(refused.value) and "'0:256'" in str(refused.value)
    assert main(["extract", "--positions", "all", "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert ExtractConfig(out=tmp_path, sites=["residual"], positions="all").span is not None
    assert ExtractConfig(out=tmp_path, sites=["wkv"], positions="0:256").span.stop == 256
