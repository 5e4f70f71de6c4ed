"""The passes of ``statetap extract``: length buckets under a token budget change no result
(each row equals that row run alone), the forward stops after the last requested layer and
computes no logits unless they are asked for, and the model loads with dtype, device map,
revision and remote-code options."""

from __future__ import annotations

import pytest
import torch
from _extract_models import TOKENIZER, alone, build, random_texts, save, token_ids

import statetap
from statetap.defaults import load_model
from statetap.extract import ExtractConfig, extract, load_extraction
from statetap.extract.batching import length_buckets

# very different lengths, so that the buckets pad rows of different lengths together
TEXTS = random_texts([1, 150, 3, 97, 40, 2, 120, 8, 61], seed=2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_length_buckets_are_greedy_under_the_row_count_and_token_budget(seed):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 60, (57,), generator=generator).tolist()
    batch_size, max_tokens = 5, 130
    groups = length_buckets(lengths, batch_size, max_tokens)
    order = [index for group in groups for index in group]
    assert sorted(order) == list(range(len(lengths)))
    ordered = [lengths[i] for i in order]
    assert ordered == sorted(lengths, reverse=True)
    for group, following in zip(groups, [*groups[1:], None]):
        longest = lengths[group[0]]
        assert len(group) <= batch_size and len(group) * longest <= max_tokens
        if following is not None:  # closed only because the next row did not fit
            assert len(group) == batch_size or (len(group) + 1) * longest > max_tokens


@pytest.mark.parametrize("kind", ["rwkv", "mamba"])
@pytest.mark.parametrize("positions", [[0, -1], "0:160"])
def test_bucketed_rows_equal_each_row_run_alone(tmp_path, kind, positions):
    model = build(kind)
    config = ExtractConfig(
        out=tmp_path,
        positions=positions,
        batch_size=4,
        max_tokens=200,
        max_length=160,
        shard_rows=5,
        progress=False,
    )
    extract(model, TOKENIZER, TEXTS, config, "m")
    manifest, tensors = load_extraction(tmp_path)
    tap = statetap.attach(model)
    sites = ["residual", "state"]
    for row, text in enumerate(TEXTS):
        if positions == "0:160":
            expected = alone(tap, text, sites, range(3), range(len(text)))
            window = slice(int(tensors["offsets"][row]), int(tensors["offsets"][row + 1]))
            got = {name: value[window] for name, value in tensors.items() if "." in name}
        else:
            expected = alone(tap, text, sites, range(3), positions)
            got = {name: value[row] for name, value in tensors.items() if "." in name}
        assert set(got) == set(expected)
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, msg=f"row {row} {name}")


def _counting(modules: dict[str, torch.nn.Module]):
    calls = dict.fromkeys(modules, 0)

    def hook(name):
        def count(module, args, output):
            calls[name] += 1

        return count

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    return calls, handles


@pytest.mark.parametrize("kind", ["rwkv", "mamba"])
def test_a_pass_stopped_after_a_layer_equals_the_full_pass_and_runs_nothing_later(kind):
    model = build(kind, layers=4)
    tap = statetap.attach(model)
    blocks = tap.adapter.blocks
    later = {"block 2": blocks[2], "block 3": blocks[3], "final norm": tap.adapter.final_norm}
    later["unembedding"] = tap.adapter.unembedding
    calls, handles = _counting(later)
    ids = torch.cat([token_ids(TEXTS[3])[:, :40], token_ids(TEXTS[4])])
    emit = [statetap.Emit("residual", [0, 1], [0, 7, -1]), statetap.Emit("state", 1, [5, -1])]
    try:
        stopped = tap.run(ids, emit=emit, stop_after=1)
        assert calls == dict.fromkeys(later, 0)
        full = tap.run(ids, emit=emit)
        assert calls == dict.fromkeys(later, 1)
    finally:
        for handle in handles:
            handle.remove()
    assert stopped.logits is None and stopped.output is None and full.logits is not None
    assert set(stopped.activations) == set(full.activations)
    for key, value in full.activations.items():
        assert torch.equal(stopped.activations[key], value), key
    # the last layer too: the final norm and the unembedding do not run
    last = tap.run(ids, emit=[statetap.Emit("residual", -1)], stop_after=-1)
    assert torch.equal(
        last["residual", 3], tap.run(ids, emit=[statetap.Emit("residual", 3)])["residual", 3]
    )


def test_stop_after_refuses_later_requests_and_keep_state():
    tap = statetap.attach(build("rwkv"))
    ids = token_ids(TEXTS[4])
    with pytest.raises(ValueError, match=r"ends the pass after layer 1, but \[\('wkv', 2\)\]"):
        tap.run(ids, emit=[statetap.Emit("wkv", [1, 2])], stop_after=1)
    with pytest.raises(ValueError, match="no state to keep"):
        tap.run(ids, keep_state=True, stop_after=1)
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        tap.run(ids, stop_after=5)


@pytest.mark.parametrize("logits", [False, True])
def test_extract_runs_no_later_layer_and_no_logits_unless_asked(tmp_path, logits):
    model = build("mamba", layers=3)
    adapter = statetap.attach(model).adapter
    later = {"block 1": adapter.blocks[1], "block 2": adapter.blocks[2]}
    later["unembedding"] = adapter.unembedding
    calls, handles = _counting(later)
    config = ExtractConfig(
        out=tmp_path, layers=[0], positions=[0, -1], logits=logits, batch_size=3, progress=False
    )
    try:
        extract(model, TOKENIZER, TEXTS, config, "m")
    finally:
        for handle in handles:
            handle.remove()
    probe = adapter.probe_passes  # attach's probe passes run the whole model
    passes = 3  # 9 texts, 3 per pass
    assert calls == dict.fromkeys(later, probe + (passes if logits else 0))
    _, tensors = load_extraction(tmp_path)
    assert ("logits" in tensors) is logits
    if logits:
        for row, text in enumerate(TEXTS):
            expected = model(token_ids(text)).logits[0, [0, len(text) - 1]]
            torch.testing.assert_close(tensors["logits"][row], expected)


def test_load_model_passes_dtype_device_map_revision_and_remote_code(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    folder = save(build("rwkv"), tmp_path / "model")
    seen = {}
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, name, **options):
        seen.update(options)
        return real(cls, name, **options)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    model, _ = load_model(str(folder), "bfloat16", "cpu", "main", trust_remote_code=True)
    assert seen == dict(
        revision="main", trust_remote_code=True, dtype=torch.bfloat16, device_map="cpu"
    )
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    with pytest.raises(ValueError, match="dtype must name a torch dtype"):
        load_model(str(folder), "float33")


def test_cli_model_dtype_reaches_the_model_and_the_manifest(tmp_path):
    from statetap.cli import main

    folder = save(build("rwkv"), tmp_path / "model")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS[:3]) + "\n")
    arguments = ["extract", "--model", str(folder), "--text-file", str(tmp_path / "texts.txt")]
    arguments += ["--dtype", "bfloat16", "--sites", "residual", "--out", str(tmp_path / "run")]
    assert main([*arguments, "--no-progress"]) == 0
    manifest, tensors = load_extraction(tmp_path / "run")
    assert manifest["config"]["model_dtype"] == "bfloat16"
    model, _ = load_model(str(folder), "bfloat16")
    tap = statetap.attach(model)
    for row, text in enumerate(TEXTS[:3]):
        for name, value in alone(tap, text, ["residual"], range(3), [-1]).items():
            torch.testing.assert_close(tensors[name][row], value.float(), msg=name)
