"""``statetap convert-rwkv``: a BlinkDL ``.pth`` (or a port's folder) becomes a transformers
folder that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load to the logits and token ids of the
original; bad input is refused and an interrupted conversion leaves nothing behind."""

from __future__ import annotations

import json

import pytest
import torch
from rwkv_blinkdl_cases import SIZES, random_checkpoint
from rwkv_port_layouts import fla_config, fla_layout, write_folder
from transformers import AutoModelForCausalLM, AutoTokenizer, MambaConfig, MambaForCausalLM

import statetap.models  # noqa: F401  (registers the Auto classes)
from statetap.cli import main
from statetap.models import from_blinkdl, from_blinkdl_state_dict
from statetap.models.convert import convert_checkpoint
from statetap.models.world_tokenizer import RwkvWorldTokenizer, world_tokenizer

MODEL_TYPES = {"x052": "statetap_rwkv5", "x060": "statetap_rwkv6", "x070": "statetap_rwkv7"}


def save_pth(state: dict, tmp_path, name: str = "model.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def world_sized(version: str, seed: int) -> dict[str, torch.Tensor]:
    """A random checkpoint with the World vocabulary's 65536 embedding rows."""
    return random_checkpoint(version, seed, SIZES[version] | {"vocab": 65536})


def logits(model, vocab: int) -> torch.Tensor:
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (2, 7))
    with torch.no_grad():
        return model(ids).logits


def no_leftovers(folder) -> bool:
    return not [p.name for p in folder.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("version", ["x052", "x060", "x070"])
def test_converted_folder_loads_to_the_blinkdl_logits(tmp_path, capsys, version, fresh_seed):
    pth = save_pth(random_checkpoint(version, fresh_seed), tmp_path)
    out = tmp_path / "converted"
    assert main(["convert-rwkv", str(pth), str(out), "--no-tokenizer"]) == 0
    assert str(out) in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == MODEL_TYPES[version]
    assert (out / "model.safetensors").is_file()
    assert not (out / "tokenizer_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    vocab = SIZES[version]["vocab"]
    assert torch.equal(logits(model, vocab), logits(from_blinkdl(pth), vocab))
    assert no_leftovers(tmp_path)


def test_world_model_converts_with_its_tokenizer_in_bfloat16(tmp_path, fresh_seed):
    pth = save_pth(world_sized("x070", fresh_seed), tmp_path)
    out = tmp_path / "world"
    assert main(["convert-rwkv", str(pth), str(out), "--dtype", "bfloat16"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert model.head.weight.dtype == torch.bfloat16
    reference = from_blinkdl(pth, dtype=torch.bfloat16)
    assert torch.equal(logits(model, 65536), logits(reference, 65536))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert isinstance(tokenizer, RwkvWorldTokenizer)
    text = "User: 状态 steering?\n\nAssistant: Yes 🙂"
    assert tokenizer(text)["input_ids"] == world_tokenizer().encode(text)
    assert tokenizer.pad_token_id == 0


def test_a_port_folder_converts_too(tmp_path, fresh_seed):
    state = random_checkpoint("x070", fresh_seed)
    reference = from_blinkdl_state_dict(state)
    stated = fla_config(reference.config) | {"pad_token_id": 3}  # bos 1, eos 2: fla's
    fla = write_folder(tmp_path / "fla", stated, fla_layout(state))
    out = convert_checkpoint(fla, tmp_path / "converted", tokenizer=False)
    converted = AutoModelForCausalLM.from_pretrained(out)
    vocab = SIZES["x070"]["vocab"]
    assert torch.equal(
        logits(converted, vocab), logits(AutoModelForCausalLM.from_pretrained(fla), vocab)
    )
    assert converted.config.model_type == "statetap_rwkv7"
    # the port's special ids, not statetap's defaults (0)
    for name, expected in (("pad_token_id", 3), ("bos_token_id", 1), ("eos_token_id", 2)):
        assert stated[name] == expected
        assert getattr(converted.config, name) == expected, name
        assert getattr(converted.generation_config, name) == expected, name


def test_existing_destination_is_refused(tmp_path, fresh_seed, capsys):
    pth = save_pth(random_checkpoint("x052", fresh_seed), tmp_path)
    (tmp_path / "taken").mkdir()
    # the command line checks it before loading anything: a usage error, status 2
    assert main(["convert-rwkv", str(pth), str(tmp_path / "taken"), "--no-tokenizer"]) == 2
    assert "taken exists" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match="taken exists"):
        convert_checkpoint(pth, tmp_path / "taken")


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda tmp: tmp / "missing.pth", FileNotFoundError, "neither a .pth file nor a folder"),
        (lambda tmp: _write(tmp / "junk.pth", b"not a checkpoint"), ValueError, "not a torch"),
        (
            lambda tmp: save_pth({"emb.weight": torch.zeros(3, 4)}, tmp, "rwkv4.pth"),
            ValueError,
            "not a BlinkDL RWKV checkpoint",
        ),
    ],
    ids=["missing", "junk", "not-rwkv"],
)
def test_bad_sources_are_refused(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        convert_checkpoint(make(tmp_path), tmp_path / "out", tokenizer=False)
    assert not (tmp_path / "out").exists()


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_a_folder_of_another_model_is_refused(tmp_path):
    config = MambaConfig(vocab_size=11, hidden_size=8, num_hidden_layers=1, state_size=4)
    MambaForCausalLM(config).save_pretrained(tmp_path / "mamba")
    with pytest.raises(ValueError, match="loads as MambaForCausalLM, not as one of statetap's"):
        convert_checkpoint(tmp_path / "mamba", tmp_path / "out", tokenizer=False)


def test_world_tokenizer_for_another_vocabulary_is_refused(tmp_path, fresh_seed):
    pth = save_pth(random_checkpoint("x060", fresh_seed), tmp_path)
    with pytest.raises(ValueError, match="not the World vocabulary's 65536"):
        convert_checkpoint(pth, tmp_path / "out")
    with pytest.raises(TypeError, match="dtype must be one of"):
        convert_checkpoint(pth, tmp_path / "out", dtype=torch.int8, tokenizer=False)
    with pytest.raises(SystemExit):
        main(["convert-rwkv", str(pth), str(tmp_path / "out"), "--dtype", "float64"])
    assert not (tmp_path / "out").exists()


def test_an_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch, fresh_seed):
    pth = save_pth(world_sized("x052", fresh_seed), tmp_path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(RwkvWorldTokenizer, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(pth, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert no_leftovers(tmp_path)
