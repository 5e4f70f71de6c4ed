"""``statetap demo`` on the zoo's short recipes: every report file, a table with every model,
the steering, lens and ELK sections."""

from __future__ import annotations

import json

import pytest

from statetap.cli import main
from statetap.demo import REPORT_FILES, DemoConfig


def test_short_demo_writes_every_report_file_and_a_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STATETAP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    quirky = ["quirky-mamba", "quirky-rwkv4", "quirky-rwkv7"]
    text = ["text-mamba", "text-rwkv4", "text-rwkv7"]
    models = quirky + text
    argv = ["demo", "--short", "--out", str(out), "--texts", "24", "--repeats", "2"]
    assert main([*argv, "--models", *models]) == 0
    printed = capsys.readouterr().out
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = printed.split("report:")[0].strip().splitlines()
    assert len(table) == 1 + len(models)
    for line, name in zip(table[1:], models):
        assert line.startswith(name)
    summary = json.loads((out / "summary.json").read_text())
    for entry in summary["models"]:
        assert entry["extraction"]["texts"] == 24
        assert entry["cost"][0]["variant"] == "plain" and entry["cost"][0]["ratio"] == 1.0
        shards = list((out / "extraction" / entry["name"]).glob("*.safetensors"))
        assert len(shards) == entry["extraction"]["shards"] >= 1
    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name in models)
    # The steering section: every mode of every quirky model, a shift that is rate - baseline.
    steering = summary["steering"]
    assert [(r["model"], r["mode"]) for r in steering] == [
        (m, mode) for m in quirky for mode in ("residual", "state", "both")
    ]
    for row in steering:
        assert 0.0 <= row["baseline_rate"] <= 1.0 and 0.0 <= row["rate"] <= 1.0
        assert row["shift"] == pytest.approx(row["rate"] - row["baseline_rate"])
        assert f"| {row['model']} | {row['mode']} | {row['layer']} |" in report
    assert all((out / f"steering-{m}.png").stat().st_size > 0 for m in quirky)
    # The lens section: tuned and logit lens at every layer of each text model, the last layer
    # reproducing the model, a plot and a saved lens per model.
    lens = summary["lens"]
    for name in text:
        rows = [r for r in lens if r["model"] == name]
        assert {(r["lens"], r["layer"]) for r in rows} == {
            (kind, layer) for kind in ("tuned", "logit") for layer in range(2)
        }
        assert all(r["final_layer_error"] <= 1e-5 for r in rows)
        last = {r["lens"]: r["kl_nats"] for r in rows if r["layer"] == 1}
        assert last["tuned"] == pytest.approx(0.0, abs=1e-6) and last["logit"] == last["tuned"]
        assert (out / f"lens-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "lens" / name / "config.json").is_file()
        assert f"### {name}" in report
    # The ELK section: per quirky model, probe and site (residual and state side by side) the
    # best layer's AUROCs; the results and the figure on disk.
    elk = summary["elk"]
    for name in quirky:
        rows = [r for r in elk if r["model"] == name]
        assert {(r["probe"], r["site"]) for r in rows} == {
            (probe, site)
            for probe in ("lr", "lr-on-pair", "mean-diff", "lda", "random")
            for site in ("residual", "state")
        }
        assert all(0.0 <= r["auroc_truth"] <= 1.0 for r in rows)
        # the random-model control beside every figure, from the control's own results
        control = json.loads((out / "elk" / name / "control" / "elk.json").read_text())
        assert control["meta"]["random_weights"] == {"seed": 0}
        for r in rows:
            truth = [
                c["auroc_truth"]
                for c in control["probes"]
                if (c["probe"], c["site"], c["train"], c["test"])
                == (r["probe"], r["site"], "A", "B")
            ]
            assert r["control_auroc_truth"] == max(truth)
        assert (out / "elk" / name / "elk.json").is_file()
        assert (out / "elk" / name / "elk-auroc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Eliciting latent knowledge" in report
    assert "The same architecture with random weights:" in report and "; random 0." in report
    assert all(
        all(key not in entry for key in ("steering", "lens", "elk")) for entry in summary["models"]
    )
    # The patching section: operand patching and character tracing on each quirky model, each
    # site's peak as the saved sweep has it, the heatmaps; the last layer's residual at the last
    # token recovers the whole gap, whatever the model.
    from statetap.interp.patching import load_result

    patching = summary["patching"]
    assert [(r["model"], r["task"], r["method"]) for r in patching] == [
        (m, task, method)
        for m in quirky
        for task, method in (("operand", "activation patching"), ("character", "causal tracing"))
    ]
    for row in patching:
        result = load_result(out / "patching" / row["model"] / row["task"])
        for peak in row["peaks"]:
            layer, position, effect = result.peak(peak["site"])
            assert (peak["layer"], peak["position"]) == (layer, position)
            assert peak["effect"] == pytest.approx(effect)
        assert all((out / figure).stat().st_size > 0 for figure in row["figures"])
        if row["task"] == "operand":
            gap = (result.clean - result.corrupt).abs() > 1e-3
            assert result.effect["residual"][gap, -1, -1].tolist() == pytest.approx(
                [1.0] * int(gap.sum()), abs=1e-4
            )
    assert "## Activation patching and causal tracing" in report
    # A second run reuses the cache and replaces the report.
    assert main([*argv, "--models", "quirky-mamba"]) == 0
    assert json.loads((out / "summary.json").read_text())["models"][0]["name"] == "quirky-mamba"


def test_demo_config_refuses_unknown_models_and_bad_counts(tmp_path):
    with pytest.raises(ValueError, match="models must name zoo models"):
        DemoConfig(out=tmp_path, models=("gpt2",))
    with pytest.raises(ValueError, match="repeats must be a positive int"):
        DemoConfig(out=tmp_path, repeats=0)
