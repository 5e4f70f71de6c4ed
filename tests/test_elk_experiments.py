"""ELK experiments: features against the model's own outputs, the transfer experiments on
synthetic features with a known truth and a known "Bob output" direction, the anomaly
detector against a hand computation, results on disk, the CLI on a short zoo model."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import MambaConfig, MambaForCausalLM, RwkvConfig, RwkvForCausalLM

import statetap
from statetap.cli import main
from statetap.interp.elk.anomaly import MahalanobisDetector
from statetap.interp.elk.experiments import (
    ALL_LAYERS,
    ElkConfig,
    probe_split,
    run_experiments,
    subset_masks,
)
from statetap.interp.elk.features import QuirkyFeatures, quirky_features
from statetap.interp.elk.results import RESULTS_FILE, ElkResults
from statetap.zoo.quirky import ANSWERS, quirky_addition
from statetap.zoo.quirky_operations import quirky_operation
from statetap.zoo.tokenizer import quirky_tokenizer


def fresh_generator() -> torch.Generator:
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))


def pair_count_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC by counting every (true, false) pair, ties one half."""
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    return wins.mean().item()


# --- features -------------------------------------------------------------------------------


def tiny_model(arch: str):
    torch.manual_seed(0)
    vocab = len(quirky_tokenizer())
    if arch == "mamba":
        config = MambaConfig(
            vocab_size=vocab, hidden_size=16, num_hidden_layers=2, state_size=4, expand=2
        )
        return MambaForCausalLM(config).eval()
    config = RwkvConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, context_length=64)
    return RwkvForCausalLM(config).eval()


@pytest.mark.parametrize("arch", ["mamba", "rwkv"])
def test_features_are_the_models_hidden_states_state_and_log_odds(arch):
    tokenizer = quirky_tokenizer()
    model = tiny_model(arch)
    examples = quirky_addition(7, 1, max_digits=2, seed=int(torch.randint(0, 10**6, ())))[0]
    tap = statetap.attach(model)
    found = quirky_features(tap, tokenizer, examples, batch_size=5)
    assert len(found) == len(examples) and found.num_layers == 2
    components = [s for s in found.sites if s not in ("residual", "state")]
    for i, example in enumerate(examples):
        prompt = tokenizer(example.text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model(torch.tensor([prompt]), output_hidden_states=True, use_cache=True)
        logp = out.logits[0, -1].double().log_softmax(-1)
        true_id, false_id = (tokenizer.convert_tokens_to_ids(ANSWERS[b]) for b in (True, False))
        close = dict(rtol=1e-4, atol=1e-5)  # float32 model, rows batched differently
        torch.testing.assert_close(found.log_odds[i], logp[true_id] - logp[false_id], **close)
        torch.testing.assert_close(
            found.prompt["residual"][i, 0], out.hidden_states[0][0, -1], **close
        )
        for answer, side in ((True, found.statement), (False, found.negation)):
            ids = torch.tensor([prompt + [tokenizer.convert_tokens_to_ids(ANSWERS[answer])]])
            with torch.no_grad():
                hidden = model(ids, output_hidden_states=True).hidden_states
            torch.testing.assert_close(side["residual"][i, 0], hidden[0][0, -1], **close)
        if arch == "mamba":
            for layer in range(2):
                ssm = tap.adapter.cached_state(tap.adapter.output_cache(out), "ssm", layer)
                torch.testing.assert_close(found.prompt["ssm"][i, layer], ssm.flatten(), **close)
        else:  # transformers' RWKV-4 state: [ffn_x, att_x, aa, bb, pp], each [B, C, layers]
            for layer in range(2):
                wkv = torch.stack([out.state[k][0, :, layer] for k in (2, 3, 4)])
                torch.testing.assert_close(found.prompt["wkv"][i, layer], wkv.flatten(), **close)
    concatenated = torch.cat([found.prompt[s] for s in components], dim=-1)
    torch.testing.assert_close(found.prompt["state"], concatenated)


def test_features_refuse_multi_token_answers_and_empty_input():
    from transformers import ByT5Tokenizer

    model = tiny_model("mamba")
    examples = quirky_addition(2, 1, max_digits=2, seed=0)[0]
    with pytest.raises(ValueError, match="one token"):
        quirky_features(statetap.attach(model), ByT5Tokenizer(extra_ids=0), examples)
    with pytest.raises(ValueError, match="at least one"):
        quirky_features(statetap.attach(model), quirky_tokenizer(), [])


# --- experiments on synthetic features ------------------------------------------------------


def synthetic(g: torch.Generator, n_equations: int, bob_offset: float = 0.0):
    """Quirky examples with features of two sites: ``"truth"`` carries the true label along
    a direction at layer 1 (noise at layer 0); ``"output"`` carries the label the character
    gives. The model's log-odds follow the character's label. Bob's prompts get
    ``bob_offset`` added along the truth direction at both sites (an anomaly)."""
    seed = int(torch.randint(0, 10**6, ()))
    examples = quirky_addition(n_equations, 1, max_digits=3, seed=seed)[0]
    n, d = len(examples), 6
    truth = torch.tensor([e.alice_label for e in examples])
    said = torch.tensor([e.label for e in examples])
    is_bob = torch.tensor([e.character == "Bob" for e in examples])
    direction = torch.randn(d, generator=g, dtype=torch.float64)
    direction /= direction.norm()

    def site(signal: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(n, 2, d, generator=g, dtype=torch.float64)
        noise[:, 1] += 4.0 * signal[:, None].double() * direction
        noise[:, :, :] += bob_offset * is_bob[:, None, None].double() * direction
        return noise.float()

    prompt = {"truth": site(truth), "output": site(said)}
    statement = {k: v + 0.5 for k, v in prompt.items()}
    negation = {k: v - 0.5 for k, v in prompt.items()}
    log_odds = 5.0 * (said.double() * 2 - 1) + torch.randn(n, generator=g, dtype=torch.float64)
    features = QuirkyFeatures(prompt, statement, negation, log_odds)
    quantiles = torch.rand(n // 2, generator=g, dtype=torch.float64).repeat_interleave(2)
    return examples, features, quantiles


def test_alice_probe_on_the_truth_site_transfers_to_bob_and_the_output_site_does_not():
    g = fresh_generator()
    examples, features, quantiles = synthetic(g, 600)
    config = ElkConfig(probes=("lr", "mean-diff", "random"), train_sets=("A",))
    results = run_experiments(features, examples, quantiles, config=config, progress=False)
    truth_row = results.best("lr", "truth", "A", "B")
    output_row = results.best("lr", "output", "A", "B", against="bob")
    assert truth_row["layer"] in (1, ALL_LAYERS) and truth_row["auroc_truth"] > 0.97
    assert results.rows(probe="lr", site="truth", test="B", layer=0)[0]["auroc_truth"] < 0.65
    assert output_row["auroc_bob"] > 0.97 and output_row["auroc_truth"] < 0.6
    model_b = results.model_row("B")
    assert model_b["auroc_bob"] > 0.95 and model_b["auroc_truth"] < 0.6
    # the gap recovered, from the rows' own AUROCs (checked against pair counts below)
    model_a = results.model_row("A")
    expected = (truth_row["auroc_truth"] - model_b["auroc_truth"]) / (
        model_a["auroc_truth"] - model_b["auroc_truth"]
    )
    assert truth_row["gap_recovered"] == pytest.approx(expected)
    assert truth_row["gap_recovered"] > 0.9
    # the model's AUROCs against an explicit pair count on the scored Bob prompts
    fits = probe_split(examples, config.probe_fraction, config.seed)
    bob = torch.tensor([e.character == "Bob" for e in examples]) & ~fits
    truth = torch.tensor([e.alice_label for e in examples])
    assert model_b["auroc_truth"] == pytest.approx(
        pair_count_auroc(features.log_odds[bob], truth[bob])
    )
    assert model_b["n"] == int(bob.sum())


def test_anomaly_detector_flags_bob_prompts_that_sit_off_alices_distribution():
    g = fresh_generator()
    examples, features, quantiles = synthetic(g, 800, bob_offset=12.0)
    config = ElkConfig(probes=("lr",), train_sets=("A", "AE"))
    results = run_experiments(features, examples, quantiles, config=config, progress=False)
    rows = {row["site"]: row for row in results.anomaly}
    assert set(rows) == {"truth", "output", "all"}
    assert rows["truth"]["auroc"] > 0.95
    fits = probe_split(examples, config.probe_fraction, config.seed)
    masks = subset_masks(examples, quantiles)
    assert rows["all"]["n_fit"] == int((masks["AE"] & ~fits).sum())
    assert rows["all"]["n_anomalous"] == int((masks["BH"] & ~fits).sum())


def test_mahalanobis_distance_equals_a_hand_computation():
    g = fresh_generator()
    normal = torch.randn(300, 3, generator=g, dtype=torch.float64) @ torch.tensor(
        [[2.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 0.2]], dtype=torch.float64
    )
    detector = MahalanobisDetector(ridge=0.0).fit(normal)
    points = torch.randn(17, 3, generator=g, dtype=torch.float64)
    centred = points - normal.mean(0)
    precision = torch.linalg.inv(torch.cov(normal.T))
    expected = torch.stack([c @ precision @ c for c in centred])
    torch.testing.assert_close(detector.score(points), expected)
    with pytest.raises(ValueError, match="at least 2"):
        MahalanobisDetector().fit(normal[:1])
    with pytest.raises(ValueError, match="3 columns"):
        detector.score(points[:, :2])


def test_subsets_split_and_masks_follow_the_definitions():
    examples = quirky_addition(200, 1, max_digits=3, seed=random.randrange(10**6))[0]
    fits = probe_split(examples, 0.3, seed=5)
    by_equation: dict = {}
    for e, f in zip(examples, fits.tolist()):
        by_equation.setdefault((e.a, e.b, e.shown), set()).add(f)
    assert all(len(sides) == 1 for sides in by_equation.values())
    assert sum(f for sides in by_equation.values() for f in sides) == round(0.3 * 200)
    quantiles = torch.linspace(0, 1, len(examples), dtype=torch.float64)
    masks = subset_masks(examples, quantiles)
    for i, e in enumerate(examples):
        q = quantiles[i].item()
        assert masks["A"][i] == (e.character == "Alice")
        assert masks["AE"][i] == (e.character == "Alice" and q <= 0.25)
        assert masks["BH"][i] == (e.character == "Bob" and q >= 0.75)


def test_bad_input_is_refused_with_the_argument_named():
    g = fresh_generator()
    # enough equations that every test set holds examples even outside the fit mask below
    # (with 60, a seed left the hard Alice set AH with one example, refused before the check)
    examples, features, quantiles = synthetic(g, 200)
    with pytest.raises(ValueError, match="rows for"):
        run_experiments(features, examples[:-1], quantiles[:-1], progress=False)
    with pytest.raises(ValueError, match="fit_mask"):
        run_experiments(
            features, examples, quantiles, fit_mask=torch.ones(3, dtype=torch.bool), progress=False
        )
    with pytest.raises(TypeError, match="fit_mask"):
        run_experiments(features, examples, quantiles, fit_mask=torch.ones(len(examples)))
    with pytest.raises(ValueError, match="sites"):
        run_experiments(features, examples, quantiles, config=ElkConfig(sites=("nope",)))
    with pytest.raises(ValueError, match="probes"):
        ElkConfig(probes=("svm",))
    with pytest.raises(ValueError, match="train_sets"):
        ElkConfig(train_sets=("B",))
    with pytest.raises(ValueError, match="probe_fraction"):
        ElkConfig(probe_fraction=1.0)
    # a training set with one class: every Alice label false
    fit_mask = torch.tensor([e.character == "Alice" and not e.alice_label for e in examples])
    fit_mask[-1] = False
    with pytest.raises(ValueError, match="both classes"):
        run_experiments(features, examples, quantiles, fit_mask=fit_mask, progress=False)


def test_results_round_trip_and_are_written_atomically(tmp_path):
    g = fresh_generator()
    examples, features, quantiles = synthetic(g, 120)
    config = ElkConfig(probes=("mean-diff",), train_sets=("A",), test_sets=("A", "B"))
    results = run_experiments(features, examples, quantiles, config=config, progress=False)
    path = results.save(tmp_path / "run")
    assert path.name == RESULTS_FILE and [p.name for p in path.parent.iterdir()] == [RESULTS_FILE]
    again = ElkResults.load(tmp_path / "run")
    assert again == ElkResults(**json.loads(json.dumps(vars(results))))
    best = again.best("mean-diff", "truth")
    assert best["auroc_truth"] == max(
        r["auroc_truth"] for r in again.rows(probe="mean-diff", site="truth", test="B")
    )
    assert f"{best['auroc_truth']:.3f}" in again.markdown()
    with pytest.raises(FileNotFoundError):
        ElkResults.load(tmp_path / "missing")


# --- pipeline and CLI on a short zoo model --------------------------------------------------


def test_cli_runs_the_pipeline_on_a_short_zoo_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STATETAP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "elk"
    argv = ["elk", "run", "--model", "quirky-mamba-short", "--out", str(out)]
    argv += ["--fit-equations", "48", "--probes", "lr", "mean-diff", "random", "--no-control"]
    argv += ["--train-sets", "A", "--test-sets", "A", "B"]
    assert main(argv) == 0
    results = ElkResults.load(out)
    assert (out / "elk-auroc.png").stat().st_size > 0
    sites = {"residual", "ssm", "conv", "state"}
    assert set(results.sites) == sites
    assert len(results.probes) == 3 * len(sites) * 3 * 2  # probes x sites x layers x tests
    assert "model on B" in capsys.readouterr().out
    assert main(["elk", "plot", "--results", str(out), "--test", "A"]) == 0
    assert (out / "elk-auroc-A-A.png").stat().st_size > 0


# --- acceptance (slow) ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["quirky-mamba", "quirky-rwkv4"])
def test_alice_probes_report_the_truth_on_bobs_prompts_of_zoo_models(name, tmp_path):
    """The issue's acceptance: on a quirky zoo model (trained on first use) whose own answers on
    Bob's held-out prompts follow Bob, some probe trained on Alice's prompts reaches AUROC
    >= 0.85 against the truth on Bob's prompts at its best layer; residual and state side by
    side (the demo's configuration)."""
    from statetap import zoo
    from statetap.interp.elk.demo_section import elk_quirky_model

    recipe = zoo.resolve(name)
    model, tokenizer = zoo.load(recipe, progress=False)
    assert zoo.metrics(recipe)["bob_accuracy"] >= 0.95
    report = elk_quirky_model(name, model, tokenizer, recipe, tmp_path)
    results = report.results
    assert results.model_row("B")["auroc_bob"] > 0.95  # the model answers by Bob's rule
    best = {
        (probe, site): results.best(probe, site)["auroc_truth"]
        for probe in results.probe_names
        if probe != "random"
        for site in ("residual", "state")
    }
    print(name, best)
    assert max(best.values()) >= 0.85, results.markdown()


def test_cli_lora_makes_a_saved_model_quirky_and_probes_it(tmp_path, capsys):
    """``statetap elk lora`` on a transformers folder the test writes: the adapter is saved,
    held-out accuracy reported, and ``--elk`` probes the fine-tuned model."""
    folder = tmp_path / "base"
    tiny_model("mamba").save_pretrained(folder)
    quirky_tokenizer().save_pretrained(folder)
    out = tmp_path / "quirky"
    argv = ["elk", "lora", "--model", str(folder), "--operation", "addition", "--out", str(out)]
    argv += ["--equations", "64", "--test-equations", "80", "--epochs", "1", "--lr", "1e-3"]
    assert main([*argv, "--elk", "--probes", "lr", "mean-diff", "--no-control"]) == 0
    printed = capsys.readouterr().out
    assert "held out: Alice" in printed and "model on B" in printed
    assert (out / "adapter" / "adapter_config.json").is_file()
    results = ElkResults.load(out)
    assert results.meta["dataset"].startswith("arithmetic:addition")
    assert results.meta["scored"] == 160


def test_cli_lora_takes_a_quirky_dataset_and_restricts_the_probes(tmp_path, capsys):
    """``elk lora --dataset`` trains on a dataset file's rows; ``--probes``, ``--sites`` and
    ``--no-all-layers`` restrict the probe stage as they do for ``elk run``."""
    folder = tmp_path / "base"
    tiny_model("mamba").save_pretrained(folder)
    quirky_tokenizer().save_pretrained(folder)
    train, test = quirky_operation("addition", 40, 30, max_digits=2, seed=3)
    write_quirky_rows(tmp_path / "rows.jsonl", train + test)
    out = tmp_path / "quirky"
    argv = ["elk", "lora", "--model", str(folder), "--dataset", str(tmp_path / "rows.jsonl")]
    argv += ["--out", str(out), "--epochs", "1", "--lr", "1e-3", "--elk", "--no-control"]
    argv += ["--probes", "lr", "--sites", "residual", "--no-all-layers"]
    assert main(argv) == 0
    results = ElkResults.load(out)
    assert results.probe_names == ["lr"] and results.sites == ["residual"]
    assert {r["layer"] for r in results.probes} == {0, 1}  # no "all"
    assert results.control is None
    assert results.meta["scored"] + 2 * results.meta["fit_examples"] == 140  # every row once
    # run again (as after a kill in the probe stage): the adapter and the probes are reused
    capsys.readouterr()
    assert main(argv) == 0
    assert "reusing the adapter" in capsys.readouterr().out
    assert ElkResults.load(out).probes == results.probes
    assert main([*argv, "--epochs", "2"]) == 1  # another recipe: refused, naming it
    assert "'epochs': 1" in capsys.readouterr().err


# --- user data: quirky datasets, the random-model control, resuming -------------------------


def write_quirky_rows(path, examples, difficulty=None) -> None:
    """``examples`` as rows of EleutherAI's ``quirky_*`` columns (label 0/1 as they store it)."""
    rows = [
        dict(
            statement=e.text,
            choices=list(e.choices),
            character=e.character,
            label=int(e.label),
            alice_label=e.alice_label,
            bob_label=e.bob_label,
            difficulty=e.difficulty if difficulty is None else difficulty[i],
            id=i,
        )
        for i, e in enumerate(examples)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_quirky_dataset_rows_are_read_and_bad_rows_named(tmp_path):
    from statetap.interp.elk.dataset import load_quirky_dataset, quirky_prompts

    train, _ = quirky_addition(5, 1, max_digits=2, seed=0)
    write_quirky_rows(tmp_path / "rows.jsonl", train)
    prompts = load_quirky_dataset(tmp_path / "rows.jsonl")
    assert [(p.text, p.character, p.label, p.alice_label, p.bob_label) for p in prompts] == [
        (e.text, e.character, e.label, e.alice_label, e.bob_label) for e in train
    ]
    assert [p.answer for p in prompts] == [e.answer for e in train]
    assert prompts[0].group == prompts[1].group != prompts[2].group  # Alice and Bob of one
    good = json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[1])  # Bob's row
    for change, message in [
        (dict(label=int(not good["bob_label"])), "row 0: label .* is not Bob's label"),
        (dict(character="Carol"), "row 0: character must be one of"),
        (dict(choices=[" True"]), "row 0: choices must be two distinct strings"),
        (dict(alice_label=2), "row 0: alice_label must be a bool or 0/1"),
        (dict(difficulty="hard"), "row 0: difficulty must be a number"),
    ]:
        with pytest.raises(ValueError, match=message):
            quirky_prompts([good | change])
    with pytest.raises(ValueError, match=r"row 0 lacks the columns \['choices'\]"):
        quirky_prompts([{k: v for k, v in good.items() if k != "choices"}])
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_quirky_dataset(tmp_path / "missing.jsonl")


@torch.no_grad()
def test_features_read_each_rows_own_choices():
    """A dataset may answer " True"/" False" in either order: the log-odds are log p(choices[1])
    - log p(choices[0]) per row, against the plain model's logits."""
    from dataclasses import replace

    from statetap.interp.elk.dataset import QuirkyPrompt

    model, tokenizer = tiny_model("mamba"), quirky_tokenizer()
    examples = quirky_addition(4, 1, max_digits=2, seed=1)[0]
    prompts = [
        QuirkyPrompt(e.text, e.choices, e.character, e.label, e.alice_label, e.bob_label, 1.0)
        for e in examples
    ]
    prompts[1::2] = [replace(p, choices=p.choices[::-1]) for p in prompts[1::2]]
    found = quirky_features(statetap.attach(model), tokenizer, prompts, progress=False)
    for i, p in enumerate(prompts):
        ids = tokenizer(p.text, add_special_tokens=False)["input_ids"]
        logp = model(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
        false_id, true_id = (tokenizer.convert_tokens_to_ids(c) for c in p.choices)
        expected = (logp[true_id] - logp[false_id]).item()
        assert found.log_odds[i].item() == pytest.approx(expected, abs=1e-5)


def test_random_twin_has_the_architecture_and_fresh_weights():
    from statetap.interp.elk.pipeline import random_twin
    from statetap.interp.provenance import model_identity

    model = tiny_model("rwkv")
    twin, again = random_twin(model, seed=5), random_twin(model, seed=5)
    assert model_identity(twin) == model_identity(model)
    for (name, _), q, r in zip(
        model.named_parameters(), twin.parameters(), again.parameters(), strict=True
    ):
        assert torch.equal(q, r), name  # the seed decides
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_probe_stage_writes_each_probe_and_resumes_only_the_missing(tmp_path, monkeypatch):
    import statetap.interp.elk.experiments as experiments

    g = fresh_generator()
    examples, features, quantiles = synthetic(g, 200)
    config = ElkConfig(probes=("lr", "mean-diff"), train_sets=("A", "AE"), max_iter=50)
    calls = []
    fit = experiments._fit
    monkeypatch.setattr(experiments, "_fit", lambda *a: calls.append((a[0], a[2], a[3])) or fit(*a))
    folder = tmp_path / "probes"
    first = run_experiments(
        features, examples, quantiles, config=config, progress=False, checkpoint=folder
    )
    jobs = 2 * 2 * 3 * 2  # probes x sites x layers (0, 1, all) x training sets
    assert len(calls) == jobs and len(list(folder.glob("*.json"))) == jobs + 1  # + run.json
    lost = sorted(folder.glob("lr.truth.*.AE.json"))  # as if killed before these finished
    for path in lost:
        path.unlink()
    calls.clear()
    again = run_experiments(
        features, examples, quantiles, config=config, progress=False, checkpoint=folder
    )
    assert sorted(calls, key=lambda c: str(c[2])) == [("lr", "truth", x) for x in (0, 1, "all")]
    assert again.probes == json.loads(json.dumps(first.probes))
    assert again.anomaly == json.loads(json.dumps(first.anomaly))
    other = ElkConfig(probes=("lr", "mean-diff"), train_sets=("A", "AE"), max_iter=60)
    with pytest.raises(ValueError, match=r"probe results in .*config: recorded"):
        run_experiments(
            features, examples, quantiles, config=other, progress=False, checkpoint=folder
        )


def test_cli_run_on_a_random_model_folder_and_a_quirky_dataset(tmp_path, capsys):
    """The issue's acceptance: ``elk run --model FOLDER --dataset ROWS`` on a random model, with
    difficulty from the dataset's column and the random-model control beside the table."""
    folder = tmp_path / "model"
    tiny_model("mamba").save_pretrained(folder)
    quirky_tokenizer().save_pretrained(folder)
    fit, scored = quirky_addition(60, 40, max_digits=2, seed=7)
    fit = [e for e in fit if e.character == "Alice"]
    n = len(fit) + len(scored)
    order = torch.randperm(n).tolist()  # a difficulty that is not the arithmetic's
    write_quirky_rows(tmp_path / "fit.jsonl", fit, order[: len(fit)])
    write_quirky_rows(tmp_path / "rows.jsonl", scored, order[len(fit) :])
    out = tmp_path / "elk"
    argv = ["elk", "run", "--model", str(folder), "--dataset", str(tmp_path / "rows.jsonl")]
    argv += ["--fit-dataset", str(tmp_path / "fit.jsonl"), "--out", str(out)]
    argv += ["--probes", "mean-diff", "lda", "--sites", "residual", "state"]
    argv += ["--train-sets", "A", "--test-sets", "A", "B", "AH", "BH"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = ElkResults.load(out)
    # hard: quantile (rank + 0.5) / n >= 0.75 of the difficulty column over all rows
    hard = [(rank + 0.5) / n >= 0.75 for rank in order[len(fit) :]]
    bob_hard = sum(h and e.character == "Bob" for h, e in zip(hard, scored))
    assert results.model_row("BH")["n"] == bob_hard
    control = results.control_results
    assert control is not None and control.meta["random_weights"] == {"seed": 0}
    assert len(control.probes) == len(results.probes)
    assert results.meta["identity"]["model_class"] == "MambaForCausalLM"
    assert "random-weight model" in printed and "; random 0." in printed
    assert (out / "control" / "elk.json").is_file() and (out / "probes" / "run.json").is_file()


@pytest.mark.parametrize("module", ["statetap.interp.elk.dataset", "statetap.interp.provenance"])
def test_docstring_examples(module):
    """tests/test_docs.py walks the ``statetap/`` folder only; these ``interp/`` modules here."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
