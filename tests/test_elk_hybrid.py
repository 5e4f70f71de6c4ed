"""ELK on hybrids whose attention layers hold no recurrent state (Jamba here; Bamba, Granite 4.0
hybrid, Nemotron-H and the delta-rule hybrids take the same path): the state features are read
at ``tap.state_layers`` only and equal the model's own cache there, the residual stream is read
at every layer as on a pure model, and the probes, the saved results, the checkpoint files, the
figure and ``statetap elk run`` name each site's rows by the model's own layer index."""

from __future__ import annotations

import re

import pytest
import torch
from test_elk_experiments import write_quirky_rows
from transformers import JambaConfig, JambaForCausalLM

import statetap
import statetap.interp.elk.plots as plots
from statetap.cli import main
from statetap.interp.elk.experiments import ALL_LAYERS, ElkConfig, run_experiments
from statetap.interp.elk.features import QuirkyFeatures, quirky_features
from statetap.interp.elk.results import ElkResults
from statetap.zoo.quirky import quirky_addition
from statetap.zoo.tokenizer import quirky_tokenizer

TOKENIZER = quirky_tokenizer()
STATE_LAYERS = [0, 2]  # attention on layer 1
CACHE_FIELDS = {"ssm": "recurrent_states", "conv": "conv_states"}  # transformers' cache layers


def tiny_jamba() -> JambaForCausalLM:
    torch.manual_seed(0)
    config = JambaConfig(
        vocab_size=len(TOKENIZER),
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        mamba_d_state=4,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank=4,
        attn_layer_period=2,
        attn_layer_offset=1,
        num_experts=1,
    )
    return JambaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def jamba():
    return tiny_jamba()


@torch.no_grad()
def test_hybrid_state_features_are_the_models_own_cache_at_its_recurrent_layers(jamba):
    tap = statetap.attach(jamba)
    assert list(tap.state_layers) == STATE_LAYERS and tap.adapter.n_layers == 3
    examples = quirky_addition(2, 1, max_digits=2, seed=int(torch.randint(0, 10**6, ())))[0]
    found = quirky_features(tap, TOKENIZER, examples, batch_size=3, progress=False)
    residual_only = quirky_features(tap, TOKENIZER, examples, state=False, progress=False)
    expected = {"residual": [0, 1, 2], "ssm": STATE_LAYERS, "conv": STATE_LAYERS}
    assert found.layers == expected | {"state": STATE_LAYERS}
    assert found.num_layers == 3 and residual_only.layers == {"residual": [0, 1, 2]}
    for side in ("prompt", "statement", "negation"):
        torch.testing.assert_close(
            getattr(found, side)["residual"], getattr(residual_only, side)["residual"]
        )
    close = dict(rtol=1e-4, atol=1e-5)  # float32 model, rows batched differently
    layout = tap.adapter.hidden_states_layout
    for n, example in enumerate(examples):
        prompt = TOKENIZER(example.text, add_special_tokens=False)["input_ids"]
        false, true = (TOKENIZER.convert_tokens_to_ids(c) for c in example.choices)
        for side, ids in (
            (found.prompt, prompt),
            (found.statement, prompt + [true]),
            (found.negation, prompt + [false]),
        ):
            out = jamba(torch.tensor([ids]), output_hidden_states=True, use_cache=True)
            for index, entry in enumerate(layout):
                if isinstance(entry, int):
                    torch.testing.assert_close(
                        side["residual"][n, entry], out.hidden_states[index][0, -1], **close
                    )
            for column, layer in enumerate(STATE_LAYERS):
                own = [
                    getattr(out.cache.layers[layer], CACHE_FIELDS[site])[0].flatten().float()
                    for site in ("ssm", "conv")
                ]
                torch.testing.assert_close(side["ssm"][n, column], own[0], **close)
                torch.testing.assert_close(side["conv"][n, column], own[1], **close)
                assert found.at("ssm", layer) == found.at("state", layer) == column
        assert found.prompt["state"].shape[1] == len(STATE_LAYERS)
        components = [found.prompt[s][n] for s in found.sites if s not in ("residual", "state")]
        torch.testing.assert_close(found.prompt["state"][n], torch.cat(components, -1))


def synthetic_hybrid(n_equations: int):
    """Examples with hybrid-shaped features: ``"residual"`` at layers 0, 1, 2 (noise) and
    ``"state"`` at layers 0 and 2 only, the truth written along a random direction at layer 2
    (the second column) and noise at layer 0. A probe that took a column's position for its
    layer would report the signal at layer 1."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    seed = int(torch.randint(0, 10**6, ()))
    examples = quirky_addition(n_equations, 1, max_digits=3, seed=seed)[0]
    n = len(examples)
    truth = torch.tensor([e.alice_label for e in examples]).double()
    direction = torch.nn.functional.normalize(
        torch.randn(5, generator=g, dtype=torch.float64), dim=0
    )
    state = torch.randn(n, 2, 5, generator=g, dtype=torch.float64)
    state[:, 1] += 4.0 * truth[:, None] * direction
    prompt = {"residual": torch.randn(n, 3, 4, generator=g).double(), "state": state}
    features = QuirkyFeatures(
        {k: v.float() for k, v in prompt.items()},
        {k: (v + 0.5).float() for k, v in prompt.items()},
        {k: (v - 0.5).float() for k, v in prompt.items()},
        5.0 * (torch.tensor([e.label for e in examples]).double() * 2 - 1),
        layers={"residual": [0, 1, 2], "state": STATE_LAYERS},
    )
    quantiles = torch.rand(n // 2, generator=g, dtype=torch.float64).repeat_interleave(2)
    return examples, features, quantiles


def test_probes_on_hybrid_state_features_report_the_models_layer_indices(tmp_path, monkeypatch):
    examples, features, quantiles = synthetic_hybrid(200)
    config = ElkConfig(probes=("lr",), train_sets=("A", "AE"), test_sets=("B", "BH"))
    results = run_experiments(
        features, examples, quantiles, config=config, progress=False, checkpoint=tmp_path / "p"
    )
    layers = {
        s: list(dict.fromkeys(r["layer"] for r in results.rows(site=s)))
        for s in ("residual", "state")
    }
    assert layers == {"residual": [0, 1, 2, ALL_LAYERS], "state": [0, 2, ALL_LAYERS]}
    signal = results.rows(probe="lr", site="state", train="A", test="B", layer=2)[0]
    noise = results.rows(probe="lr", site="state", train="A", test="B", layer=0)[0]
    assert signal["auroc_truth"] > 0.97 and noise["auroc_truth"] < 0.7
    assert results.best("lr", "state")["layer"] in (2, ALL_LAYERS)
    assert (tmp_path / "p" / "lr.state.2.AE.json").is_file()
    assert not (tmp_path / "p" / "lr.state.1.AE.json").exists()
    assert {r["site"] for r in results.anomaly} == {"residual", "state", "all"}
    results.save(tmp_path)
    assert ElkResults.load(tmp_path).rows(site="state", layer=2, probe="lr", test="B")
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: drawn.append(figure) or path)
    plots.plot_auroc_by_layer(results, tmp_path / "elk-auroc.png")
    state_axes = drawn[0].axes[results.sites.index("state")]
    assert state_axes.get_title() == "state: vs truth"
    ticks = [list(line.get_xdata()) for line in state_axes.get_lines() if line.get_label() == "lr"]
    assert ticks == [["0", "2", "all"]]


def test_hybrid_feature_layers_are_checked():
    examples, features, _ = synthetic_hybrid(4)
    sides = (features.prompt, features.statement, features.negation, features.log_odds)
    for layers, what in (
        ({"residual": [0, 1, 2], "state": [0, 1, 2]}, "2 increasing"),
        ({"residual": [0, 1, 2], "state": [2, 0]}, "increasing"),
        ({"residual": [0, 1, 2]}, "name the sites"),
    ):
        with pytest.raises(ValueError, match=what):
            QuirkyFeatures(*sides, layers=layers)
    with pytest.raises(ValueError, match=r"one of the layers 'state' is read at, \[0, 2\]"):
        features.at("state", 1)


def test_cli_run_probes_a_hybrids_state_at_its_recurrent_layers(jamba, tmp_path, capsys):
    folder = tmp_path / "model"
    jamba.save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    fit, scored = quirky_addition(16, 16, max_digits=2, seed=11)
    fit = [e for e in fit if e.character == "Alice"]
    write_quirky_rows(tmp_path / "fit.jsonl", fit)
    write_quirky_rows(tmp_path / "rows.jsonl", scored)
    out = tmp_path / "elk"
    argv = ["elk", "run", "--model", str(folder), "--dataset", str(tmp_path / "rows.jsonl")]
    argv += ["--fit-dataset", str(tmp_path / "fit.jsonl"), "--out", str(out)]
    argv += ["--probes", "random", "--sites", "residual", "ssm", "state"]
    argv += ["--train-sets", "A", "--test-sets", "A", "B"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for results in (ElkResults.load(out), ElkResults.load(out / "control")):
        assert results.meta["identity"]["model_class"] == "JambaForCausalLM"
        for site, layers in (
            ("residual", [0, 1, 2]),
            ("ssm", STATE_LAYERS),
            ("state", STATE_LAYERS),
        ):
            assert list(dict.fromkeys(r["layer"] for r in results.rows(site=site))) == [
                *layers,
                ALL_LAYERS,
            ]
    table = next(line for line in printed.splitlines() if line.startswith("| random |"))
    cells = [cell.strip() for cell in table.split("|")[2:-1]]  # residual, ssm, state
    assert all(re.search(r"\(L(0|2|all)[,)]", cell) for cell in cells[1:]), cells
    assert (out / "elk-auroc.png").is_file() and (
        out / "probes" / "random.state.2.A.json"
    ).is_file()
