"""Token-level extraction (``positions="all"`` and spans ``"start:stop"``), stored ragged: one
flat ``[tokens, *shape]`` tensor per site plus row offsets, equal to the model's own hidden
states (transformers' ``output_hidden_states``) and to its own cache after each prefix."""

from __future__ import annotations

import pytest
import torch
from _extract_models import TOKENIZER, build, random_texts, token_ids

import statetap
from statetap.cli import main
from statetap.extract import ExtractConfig, extract, load_extraction, open_extraction

TEXTS = random_texts([13, 1, 29, 6, 21, 2], seed=9)


@pytest.fixture(scope="module", params=["rwkv", "mamba"])
def extracted(request, tmp_path_factory):
    model = build(request.param)
    out = tmp_path_factory.mktemp(f"all-{request.param}")
    config = ExtractConfig(out=out, positions="0:64", batch_size=4, shard_rows=4, progress=False)
    extract(model, TOKENIZER, TEXTS, config, "m")
    return model, out


def test_all_positions_equal_the_model_hidden_states(extracted):
    model, out = extracted
    manifest, tensors = load_extraction(out)
    assert manifest["layout"] == "ragged" and manifest["tokens"] == sum(map(len, TEXTS))
    offsets = tensors["offsets"]
    assert offsets.tolist() == [0, *torch.tensor([len(t) for t in TEXTS]).cumsum(0).tolist()]
    adapter = statetap.attach(model).adapter
    for row, text in enumerate(TEXTS):
        tokens = slice(int(offsets[row]), int(offsets[row + 1]))
        assert tensors["positions"][tokens].tolist() == list(range(len(text)))
        hidden = model(token_ids(text), output_hidden_states=True).hidden_states
        for layer in range(3):
            index = adapter.hidden_states_index(layer)
            torch.testing.assert_close(tensors[f"residual.{layer}"][tokens], hidden[index][0])


def test_all_positions_equal_the_model_cache_after_each_prefix(extracted):
    model, out = extracted
    adapter = statetap.attach(model).adapter
    extraction = open_extraction(out)
    for row, text in enumerate(TEXTS):
        item = extraction[row]
        ids = token_ids(text)
        for t in sorted({0, len(text) // 2, len(text) - 1}):
            output = model(ids[:, : t + 1], use_cache=True)
            cache = adapter.output_cache(output)
            for site in adapter.state_sites:
                for layer in range(3):
                    own = adapter.cached_state(cache, site, layer)[0]
                    torch.testing.assert_close(
                        item[f"{site}.{layer}"][t], own.float(), msg=f"{site}.{layer} t={t}"
                    )


def test_a_span_holds_those_tokens_of_each_row(extracted, tmp_path):
    model, out = extracted
    _, whole = load_extraction(out)
    # the same batches as the whole extraction: a GEMM over another number of rows may round
    # differently (seen: 1.5e-8 with batches of 3 on an AMD EPYC, AVX2), and this compares bits
    config = ExtractConfig(out=tmp_path / "span", positions="2:7", batch_size=4, progress=False)
    extract(model, TOKENIZER, TEXTS, config, "m")
    manifest, span = load_extraction(tmp_path / "span")
    assert manifest["config"]["positions"] == "2:7"
    kept = [list(range(2, min(7, len(t)))) for t in TEXTS]
    assert span["offsets"].diff().tolist() == [len(k) for k in kept]  # rows of 1, 2 tokens: none
    assert span["positions"].tolist() == [p for k in kept for p in k]
    starts = whole["offsets"][:-1]
    chosen = torch.tensor([int(starts[row]) + p for row, k in enumerate(kept) for p in k])
    for name in manifest["tensors"]:
        assert torch.equal(span[name], whole[name][chosen]), name


def test_cli_takes_all_and_spans(tmp_path, capsys):
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    base = ["extract", "--text-file", str(tmp_path / "texts.txt"), "--no-progress"]
    assert (
        main([*base, "--positions", "0:3", "--sites", "residual", "--out", str(tmp_path / "a")])
        == 0
    )
    assert open_extraction(tmp_path / "a").manifest["config"]["positions"] == "0:3"
    assert (
        main([*base, "--positions", "all", "--sites", "residual", "--out", str(tmp_path / "c")])
        == 0
    )
    assert open_extraction(tmp_path / "c").manifest["config"]["positions"] == "all"
    assert main([*base, "--positions", "0", "all", "--out", str(tmp_path / "b")]) == 2
    assert "--positions takes ints, or one of all / start:stop" in capsys.readouterr().err
