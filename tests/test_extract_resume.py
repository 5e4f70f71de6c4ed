"""Resuming ``statetap extract``: a run killed with SIGKILL leaves only complete shards and,
run again, ends equal to an uninterrupted run, tensor for tensor; other settings or another
input in the same folder are refused with the differences named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from _extract_models import TOKENIZER, build, random_texts, save
from safetensors import safe_open

from statetap.defaults import load_model
from statetap.extract import ExtractConfig, extract, load_extraction, text_file_source

TEXTS = random_texts([9, 31, 4, 17, 22, 3, 12, 27, 8, 15], seed=11)

# the extraction, with every forward pass slowed down so that the kill lands mid-run
SLOW_RUN = """
import sys, time
from statetap.defaults import load_model
from statetap.defaults import load_model
from statetap.extract import ExtractConfig, extract, text_file_source

folder, text_file, out = sys.argv[1:]
model, tokenizer = load_model(folder)
model.rwkv.blocks[0].register_forward_pre_hook(lambda *args: time.sleep(0.25))
config = ExtractConfig(out=out, positions="0:64", batch_size=2, shard_rows=2, progress=False)
extract(model, tokenizer, text_file_source(text_file), config, "m")
"""


@pytest.fixture(scope="module")
def model_and_texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    model = build("rwkv", layers=2)
    save(model, folder / "model")
    (folder / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    return model, folder


def _config(out, **changes):
    settings = dict(positions="0:64", batch_size=2, shard_rows=2, progress=False)
    return ExtractConfig(out=out, **(settings | changes))


def test_sigkill_then_resume_equals_an_uninterrupted_run(model_and_texts, tmp_path):
    model, folder = model_and_texts
    out = tmp_path / "killed"
    command = [sys.executable, "-c", textwrap.dedent(SLOW_RUN)]
    command += [str(folder / "model"), str(folder / "texts.txt"), str(out)]
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONSAFEPATH="1")
    process = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "shard-00000.safetensors").exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    shards = sorted(out.glob("shard-*.safetensors"))
    assert 1 <= len(shards) < 5  # killed mid-run
    for path in shards:  # each one complete: the header and every tensor read back
        with safe_open(path, framework="pt") as handle:
            assert all(handle.get_tensor(name).numel() >= 0 for name in handle.keys())
    others = {p.name for p in out.iterdir()} - {p.name for p in shards} - {"manifest.json"}
    assert all(name.startswith(".") and name.endswith(".tmp") for name in others), others
    with pytest.raises(ValueError, match="did not finish"):
        load_extraction(out)

    model, tokenizer = load_model(str(folder / "model"))  # as the killed process loaded it
    torch.set_num_threads(1)  # and ran
    try:
        source = text_file_source(folder / "texts.txt")
        extract(model, tokenizer, source, _config(out), "m")
        reference = tmp_path / "uninterrupted"
        extract(model, tokenizer, source, _config(reference), "m")
    finally:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    manifest, resumed = load_extraction(out)
    expected = load_extraction(reference)[1]
    assert manifest["complete"] and manifest["rows"] == len(TEXTS)
    assert set(resumed) == set(expected)
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name


def test_other_settings_or_input_are_refused_naming_the_difference(model_and_texts, tmp_path):
    model, folder = model_and_texts
    source = text_file_source(folder / "texts.txt")
    out = tmp_path / "run"
    extract(model, TOKENIZER, source, _config(out), "m")
    with pytest.raises(ValueError, match=r"config\.max_length: 256 -> 128"):
        extract(model, TOKENIZER, source, _config(out, max_length=128), "m")
    with pytest.raises(ValueError, match=r"config\.positions: '0:64' -> \[-1\]"):
        extract(model, TOKENIZER, source, _config(out, positions=[-1]), "m")
    with pytest.raises(ValueError, match=r"input\.skip: 0 -> 1"):
        extract(model, TOKENIZER, source, _config(out), "m", skip=1)
    changed = tmp_path / "texts.txt"
    changed.write_text("\n".join(TEXTS[::-1]) + "\n")
    with pytest.raises(ValueError, match=r"input\.fingerprint: 'sha256:"):
        extract(model, TOKENIZER, text_file_source(changed), _config(out), "m")
    with pytest.raises(ValueError, match=r"config\.model: 'm' -> 'other'"):
        extract(model, TOKENIZER, source, _config(out), "other")


def test_a_complete_extraction_is_returned_as_it_is(model_and_texts, tmp_path, monkeypatch):
    model, folder = model_and_texts
    source = text_file_source(folder / "texts.txt")
    first = extract(model, TOKENIZER, source, _config(tmp_path), "m")
    import statetap.extract.shards as shards_module

    def no_writes(*args, **kwargs):
        raise AssertionError("a complete extraction was written again")

    monkeypatch.setattr(shards_module, "save_file", no_writes)
    again = extract(model, TOKENIZER, source, _config(tmp_path), "m")
    assert again.shards == first.shards and again.complete
