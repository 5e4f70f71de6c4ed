"""``statetap.interp.lens`` against hand computations on the plain models.

Tiny transformers Mamba, Mamba-2 and RWKV-4 models (built from configs, fixed seeds, odd sizes)
with transformers' byte-level tokenizer; token streams are drawn afresh each run. References are
computed without statetap: ``output_hidden_states`` and the model's own logits, the final norm
and output embedding called by hand, ``torch.optim.SGD`` stepped by hand, softmax by hand.
"""

from __future__ import annotations

import dataclasses
import doctest
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    ByT5Tokenizer,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    RwkvConfig,
    RwkvForCausalLM,
)

from statetap.cli import main
from statetap.interp.lens import (
    FINAL_LAYER_TOLERANCE,
    PRESETS,
    ZOO_RECIPE,
    LensEvaluation,
    LogitLens,
    TrainConfig,
    TunedLens,
    demo_section,
    evaluate,
    plot_bits_per_byte,
    plot_trajectory,
    step_windows,
    token_stream,
    train,
    windows,
    zoo_corpus,
)
from statetap.kernels.examples import rel_error

TOKENIZER = ByT5Tokenizer(extra_ids=0)  # pad 0, eos 1, unk 2, byte x -> x + 3
VOCAB = len(TOKENIZER)
HIDDEN, LAYERS = 24, 3
ARCHITECTURES = ("mamba", "mamba2", "rwkv")
TINY = TrainConfig(steps=3, tokens_per_step=3 * 7, seq_len=7, batch_size=2, lr=0.5)


def _build(name: str, hidden: int = HIDDEN, layers: int = LAYERS):
    torch.manual_seed(2024)
    if name == "mamba":
        config = MambaConfig(
            vocab_size=VOCAB, hidden_size=hidden, state_size=5, num_hidden_layers=layers
        )
        return MambaForCausalLM(config).eval()
    if name == "mamba2":
        config = Mamba2Config(
            vocab_size=VOCAB,
            hidden_size=hidden,
            state_size=5,
            num_hidden_layers=layers,
            expand=2,
            head_dim=8,
            num_heads=2 * hidden // 8,
            n_groups=2,
            chunk_size=4,
        )
        return Mamba2ForCausalLM(config).eval()
    config = RwkvConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        attention_hidden_size=hidden,
        intermediate_size=2 * hidden,
        rescale_every=2,
    )
    model = RwkvForCausalLM(config).eval()
    with torch.no_grad():  # give the decays and bonuses some spread
        for block in model.rwkv.blocks:
            block.attention.time_decay.normal_(0.0, 1.0)
            block.attention.time_first.normal_(0.0, 1.0)
    return model


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request):
    return _build(request.param)


@pytest.fixture(scope="module")
def mamba():
    return _build("mamba")


def _stream(tokens: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (tokens,))


def _perturb(lens: TunedLens, scale: float = 0.05) -> TunedLens:
    with torch.no_grad():
        for parameter in lens.translators.parameters():
            parameter.normal_(0.0, scale)
    return lens


# ---------------------------------------------------------------------- the lenses
def test_untrained_tuned_lens_is_the_logit_lens_exactly(model):
    ids = torch.randint(0, VOCAB, (2, 9))
    tuned, logit = TunedLens(model).predictions(ids), LogitLens(model).predictions(ids)
    assert tuned.shape == (LAYERS, 2, 9, VOCAB)
    assert torch.equal(tuned, logit)
    assert len(TunedLens(model).translators) == LAYERS - 1


def test_final_layer_reproduces_the_models_logits(model):
    ids = torch.randint(0, VOCAB, (3, 13))
    lens = _perturb(TunedLens(model))  # the last layer has no translator to perturb
    hidden, tap_logits = lens.residuals(ids)
    with torch.no_grad():
        plain = model(ids)
    for each in (lens, LogitLens(model)):
        last = each(hidden[-1], layer=LAYERS - 1)
        assert torch.equal(last, tap_logits)  # the same pass: bit for bit
        # the tap's kernel (C++ where built) rounds apart from transformers' own loop
        assert rel_error(plain.logits, last) <= 1e-6
    assert not torch.equal(lens(hidden[0], 0), LogitLens(model)(hidden[0], 0))


@pytest.mark.parametrize("version", [5, 6, 7])
def test_statetap_rwkv_models_read_like_the_others(version):
    """statetap's own RWKV-5/6/7 (``statetap.models``): the final layer is the model's logits,
    and a training step moves the translators below it."""
    from statetap import models

    ranks = {
        5: {},
        6: dict(mix_lora_rank=4, decay_lora_rank=4),
        7: dict(decay_lora_rank=4, a_lora_rank=4, value_lora_rank=4, gate_lora_rank=4),
    }[version]
    config = getattr(models, f"Rwkv{version}Config")(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, head_size=8, **ranks
    )
    torch.manual_seed(0)
    model = getattr(models, f"Rwkv{version}ForCausalLM")(config).eval()
    ids = torch.randint(0, VOCAB, (2, 11))
    lens = TunedLens(model)
    hidden, _ = lens.residuals(ids)
    with torch.no_grad():
        plain = model(ids).logits
    assert rel_error(plain, lens(hidden[-1], layer=1)) <= 1e-5
    before = lens.translators[0].weight.detach().clone()
    losses = train(lens, _stream(200), TINY, progress=False)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(lens.translators[0].weight, before)


def test_docstring_example_runs():
    from statetap.interp.lens import lens

    result = doctest.testmod(lens, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_logit_lens_is_final_norm_and_unembedding_of_each_block_output(mamba):
    ids = torch.randint(0, VOCAB, (2, 11))
    predictions = LogitLens(mamba).predictions(ids)
    with torch.no_grad():
        states = mamba(ids, output_hidden_states=True).hidden_states  # block outputs
        for layer in range(LAYERS - 1):  # transformers replaces the last one with the normed
            by_hand = mamba.lm_head(mamba.backbone.norm_f(states[layer]))
            torch.testing.assert_close(predictions[layer], by_hand, rtol=1e-5, atol=1e-5)


def _config_flags(config: TrainConfig) -> list[str]:
    """The command-line flags that give every field of ``config`` (``--no-x`` for a false bool)."""
    flags = []
    for name, value in dataclasses.asdict(config).items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            flags.append(f"--{flag}={value}")
    return flags


def _hand_written_steps(model, translators, stream, config: TrainConfig):
    """The training of ``config`` on a stream of exactly one step's windows, by hand; with
    ``momentum_scaled_lr`` and ``max_grad_norm``, as tuned-lens's train loop steps (SGD at
    ``lr * (1 - momentum)``, gradients clipped by ``clip_grad_norm_``). Returns the weights and
    the gradient norm of each step before clipping."""
    weights = [w.clone().requires_grad_(True) for w in translators]
    lr = config.lr * (1 - config.momentum) if config.momentum_scaled_lr else config.lr
    optimizer = torch.optim.SGD(
        weights,
        lr=lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    ids = stream.view(-1, config.seq_len)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    p_final = out.logits.softmax(-1)
    norms = []
    for step in range(config.steps):
        optimizer.param_groups[0]["lr"] = lr * (1 - step / config.steps)
        optimizer.zero_grad()
        loss = 0.0
        for layer in range(LAYERS - 1):
            h = out.hidden_states[layer]
            w, b = weights[2 * layer], weights[2 * layer + 1]
            logits = model.lm_head(model.backbone.norm_f(h + h @ w.T + b))
            log_q = logits.log_softmax(-1)
            kl = (p_final * (p_final.log() - log_q)).sum(-1)  # [B, L]
            loss = loss + kl.mean()
        loss.backward()
        norms.append(float(torch.cat([w.grad.flatten() for w in weights]).norm()))
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(weights, config.max_grad_norm)
        optimizer.step()
    return [w.detach() for w in weights], norms


REFERENCE = dict(momentum_scaled_lr=True, max_grad_norm=0.05)  # clips (a test checks)


@pytest.mark.parametrize(
    "recipe",
    [dict(nesterov=True), dict(nesterov=False), dict(nesterov=True, **REFERENCE)],
    ids=["nesterov", "plain-momentum", "tuned-lens-optimiser"],
)
def test_training_steps_equal_hand_written_sgd(mamba, recipe):
    # 3 windows per step in forward passes of 2: gradient accumulation across passes
    config = dataclasses.replace(TINY, weight_decay=0.03, **recipe)
    stream = _stream(config.tokens_per_step)
    lens = _perturb(TunedLens(mamba))
    start = [p.detach().clone() for p in lens.translators.parameters()]
    losses = train(lens, stream, config, progress=False)
    assert all(p.grad is None for p in mamba.parameters())  # the model collected nothing
    assert all(p.requires_grad for p in mamba.parameters())  # and is as it was
    expected, norms = _hand_written_steps(mamba, start, stream, config)
    if config.max_grad_norm:
        assert min(norms) > config.max_grad_norm  # every step was clipped
    mamba.zero_grad(set_to_none=True)
    for got, want in zip(lens.translators.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-5)
    assert len(losses) == config.steps and losses[-1] < losses[0]
    assert lens.meta["train"] == dataclasses.asdict(config)


def test_reference_recipes_step_as_tuned_lens_does():
    """tuned-lens's SGD: lr_scale 1.0 times (1 - momentum 0.9), gradients clipped at norm 1.0;
    statetap's own recipes step at 1.0 unclipped."""
    tuned_lens = dict(momentum_scaled_lr=True, max_grad_norm=1.0)
    for own, reference in (("paper", "reference"), ("zoo", "zoo-reference")):
        config = PRESETS[reference]
        assert math.isclose(config.step_lr, 0.1) and config.max_grad_norm == 1.0
        assert config == dataclasses.replace(PRESETS[own], **tuned_lens)  # the rest is the same
    for name in ("paper", "zoo", "demo"):
        assert PRESETS[name].step_lr == 1.0 and PRESETS[name].max_grad_norm == 0.0


@pytest.mark.parametrize("name", ["mamba", "rwkv"])
def test_training_lowers_kl_below_the_logit_lens_on_held_out_tokens(name):
    model = _build(name, hidden=16, layers=3)
    config = TrainConfig(steps=12, tokens_per_step=8 * 16, seq_len=16, batch_size=8)
    lens = TunedLens(model)
    train(lens, _stream(4096), config, progress=False)
    result = evaluate(lens, _stream(16 * 8 + 1), seq_len=16)
    assert result.lenses == ["tuned", "logit"]
    tuned, logit = result.kl
    assert all(t < l for t, l in zip(tuned[:-1], logit[:-1])), result.markdown()
    assert tuned[-1] == logit[-1] == 0.0


# ---------------------------------------------------------------------- evaluation
def test_evaluation_equals_a_hand_computation(mamba):
    seq_len, n = 9, 3
    stream = _stream(seq_len * n + 5)  # a short tail that fits no window
    lens = _perturb(TunedLens(mamba))
    result = evaluate(lens, stream, seq_len=seq_len, batch_size=2, bytes_per_token=1.5)
    assert result.tokens == n * seq_len
    batch = torch.stack([stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])
    inputs, targets = batch[:, :-1], batch[:, 1:]
    hidden, _ = lens.residuals(inputs)
    with torch.no_grad():
        final = mamba(inputs).logits
        p = final.softmax(-1)
        model_ce = F.cross_entropy(final.flatten(0, 1), targets.flatten()).item()
        for i, each in enumerate((lens, LogitLens(mamba))):
            for layer in range(LAYERS):
                q = each(hidden[layer], layer).softmax(-1)
                ce = -q.gather(-1, targets[..., None]).log().mean().item()
                kl = (p * (p.log() - q.log())).sum(-1).mean().item()
                entropy = -(q * q.log()).sum(-1).mean().item()
                assert result.cross_entropy[i][layer] == pytest.approx(ce, rel=1e-4)
                assert result.kl[i][layer] == pytest.approx(kl, rel=1e-4, abs=1e-6)
                assert result.entropy[i][layer] == pytest.approx(entropy, rel=1e-4)
                bpb = ce / math.log(2) / 1.5
                assert result.bits_per_byte[i][layer] == pytest.approx(bpb, rel=1e-4)
    assert result.model_cross_entropy == pytest.approx(model_ce, rel=1e-5)
    assert result.final_layer_error <= FINAL_LAYER_TOLERANCE and result.final_layer_ok
    rows = result.as_dicts()
    assert len(rows) == 2 * LAYERS and rows[0]["lens"] == "tuned" and rows[-1]["layer"] == 2
    table = result.markdown()
    assert table.count("\n| tuned |") == LAYERS and "Final-layer check passed" in table


def test_evaluation_round_trips_through_json(mamba, tmp_path):
    result = evaluate(LogitLens(mamba), _stream(40), seq_len=6, max_windows=2)
    assert result.lenses == ["logit"] and result.tokens == 12
    result.meta = {"model": "tiny"}
    assert LensEvaluation.load(result.save(tmp_path / "e" / "evaluation.json")) == result


def test_failed_final_layer_check_is_reported():
    result = LensEvaluation(["logit"], [[1.0, 0.5]], [[0.5, 0.0]], [[1.0, 1.0]], 0.5, 1.0, 10, 1e-3)
    assert not result.final_layer_ok and "FAILED" in result.markdown()


def test_zoo_text_model_scores_as_the_zoo_measured_it():
    from statetap.zoo import train as zoo_train
    from statetap.zoo.recipes import RECIPES, short

    recipe = short(RECIPES["text-mamba"])
    trained = zoo_train.train(recipe, progress=False)
    _, held_out, bytes_per_token = zoo_corpus(recipe)
    result = evaluate(
        LogitLens(trained.model), held_out, seq_len=recipe.seq_len, max_windows=recipe.eval_windows
    )
    assert bytes_per_token == 1.0
    assert result.model_bits_per_byte == pytest.approx(trained.metrics["bits_per_byte"], rel=1e-5)


# ---------------------------------------------------------------------- data
def test_step_windows_are_shuffled_epochs():
    order = step_windows(7, 3, seed=5)
    drawn = torch.cat([next(order) for _ in range(7)])  # 21 = three epochs of 7
    for epoch in drawn.view(3, 7):
        assert sorted(epoch.tolist()) == list(range(7))
    again = step_windows(7, 3, seed=5)
    assert torch.equal(torch.cat([next(again) for _ in range(7)]), drawn)


def test_windows_and_token_stream():
    stream = torch.arange(23)
    assert windows(stream, 5).tolist()[-1] == [15, 16, 17, 18, 19]
    assert windows(stream, 5, stride=4).shape == (5, 5)
    ids, bytes_per_token = token_stream(TOKENIZER, ["ab", "é"])
    assert ids.tolist() == [ord("a") + 3, ord("b") + 3, 1, 0xC3 + 3, 0xA9 + 3, 1]
    assert bytes_per_token == 1.0


# ---------------------------------------------------------------------- save and load
def test_save_load_round_trip_gives_identical_outputs(model, tmp_path):
    lens = _perturb(TunedLens(model, meta={"model": "tiny", "note": [1, 2]}))
    folder = lens.save(tmp_path / "lens")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "translators.safetensors"]
    record = json.loads((folder / "config.json").read_text())
    assert (record["hidden_size"], record["n_layers"]) == (HIDDEN, LAYERS)
    assert record["model_class"] == type(model).__name__
    loaded = TunedLens.load(folder, model)
    assert loaded.meta == lens.meta
    ids = torch.randint(0, VOCAB, (2, 8))
    assert torch.equal(loaded.predictions(ids), lens.predictions(ids))


def test_load_refuses_another_models_lens(tmp_path):
    folder = _perturb(TunedLens(_build("mamba"))).save(tmp_path / "lens")
    with pytest.raises(ValueError, match="hidden_size: lens 24, model 16"):
        TunedLens.load(folder, _build("mamba", hidden=16))
    with pytest.raises(ValueError, match="n_layers: lens 3, model 2"):
        TunedLens.load(folder, _build("mamba", layers=2))
    with pytest.raises(ValueError, match="model_class: lens 'MambaForCausalLM'"):
        TunedLens.load(folder, _build("rwkv"))
    torch.manual_seed(0)  # the same class, width and depth with another config
    other = MambaForCausalLM(
        MambaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, state_size=3, num_hidden_layers=LAYERS)
    )
    with pytest.raises(ValueError, match="config_sha256: recorded"):
        TunedLens.load(folder, other)


def test_load_refuses_damaged_folders(mamba, tmp_path):
    folder = _perturb(TunedLens(mamba)).save(tmp_path / "lens")
    other = _perturb(TunedLens(mamba)).save(tmp_path / "other")
    (folder / "translators.safetensors").write_bytes(
        (other / "translators.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="not the file"):
        TunedLens.load(folder, mamba)
    (other / "config.json").write_text(json.dumps({"kind": "sweep"}))
    with pytest.raises(ValueError, match="does not describe a tuned lens"):
        TunedLens.load(other, mamba)
    with pytest.raises(FileNotFoundError, match="not a saved tuned lens"):
        TunedLens.load(tmp_path / "missing", mamba)
    with pytest.raises(TypeError, match="JSON"):  # unsaveable meta: nothing is written
        TunedLens(mamba, meta={"bad": object()}).save(tmp_path / "unsaved")
    assert not (tmp_path / "unsaved").exists()


# ---------------------------------------------------------------------- bad input
def test_bad_arguments_raise_naming_the_argument(mamba):
    lens = TunedLens(mamba)
    cases = [
        (lambda: TrainConfig(steps=0), ValueError, "steps"),
        (lambda: TrainConfig(lr="1"), TypeError, "lr"),
        (lambda: TrainConfig(batch_size=2.0), TypeError, "batch_size"),
        (lambda: TrainConfig(tokens_per_step=100, seq_len=64), ValueError, "tokens_per_step"),
        (lambda: TrainConfig(momentum=1.0), ValueError, "momentum"),
        (lambda: TrainConfig(momentum=0.0), ValueError, "nesterov"),
        (lambda: TrainConfig(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
        (lambda: TrainConfig(momentum_scaled_lr=1), TypeError, "momentum_scaled_lr"),
        (lambda: train(LogitLens(mamba), _stream(50), TINY), TypeError, "TunedLens"),
        (lambda: train(lens, _stream(50), {"steps": 1}), TypeError, "TrainConfig"),
        (lambda: train(lens, torch.rand(50), TINY), TypeError, "stream"),
        (lambda: train(lens, _stream(50)[None], TINY), ValueError, "stream"),
        (lambda: train(lens, _stream(5), TINY), ValueError, "shorter than one window"),
        (
            lambda: train(TunedLens(_build("mamba", layers=1)), _stream(50), TINY),
            ValueError,
            "one-layer",
        ),
        (lambda: evaluate(lens, _stream(50), seq_len=0), ValueError, "seq_len"),
        (lambda: evaluate(lens, _stream(50), max_windows=0), ValueError, "max_windows"),
        (lambda: evaluate(lens, _stream(50), bytes_per_token=0), ValueError, "bytes_per_token"),
        (lambda: evaluate(mamba, _stream(50)), TypeError, "lens"),
        (lambda: lens(torch.zeros(2, HIDDEN + 1), 0), ValueError, "hidden"),
        (lambda: lens(torch.zeros(2, HIDDEN), LAYERS), ValueError, "layer 3"),
        (lambda: lens(torch.zeros(2, HIDDEN), 1.0), TypeError, "layer"),
        (lambda: LogitLens("mamba"), TypeError, "model"),
        (lambda: LogitLens(torch.nn.Linear(2, 2)), TypeError, "no adapter"),
        (lambda: token_stream(TOKENIZER, "text"), TypeError, "texts"),
        (lambda: zoo_corpus("quirky-mamba"), ValueError, "not a text recipe"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


# ---------------------------------------------------------------------- plots, demo
def test_plots_are_written(mamba, tmp_path):
    lens = _perturb(TunedLens(mamba))
    result = evaluate(lens, _stream(30), seq_len=7)
    path = plot_bits_per_byte(result, tmp_path / "plots" / "bpb.png", title="tiny")
    ids = torch.tensor(TOKENIZER("a $x$ b\n", add_special_tokens=False)["input_ids"])
    trajectory = plot_trajectory(lens, ids, TOKENIZER, tmp_path / "trajectory.svg")
    assert path.stat().st_size > 1000 and trajectory.stat().st_size > 1000
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="one prompt"):
        plot_trajectory(lens, ids[None], TOKENIZER, tmp_path / "x.png")


def test_demo_section_writes_its_table_and_figures(mamba, tmp_path):
    config = TrainConfig(steps=2, tokens_per_step=32, seq_len=8, batch_size=4)
    report = demo_section.lens_section(
        "tiny", mamba, TOKENIZER, _stream(200), _stream(60), tmp_path, config, eval_windows=3
    )
    assert report.evaluation.tokens == 24 and report.evaluation.final_layer_ok
    for figure in report.figures:
        assert (tmp_path / figure).exists()
    TunedLens.load(report.lens_folder, mamba)
    lines = demo_section.markdown([report])
    assert lines[0] == "## Tuned lens" and "### tiny" in lines
    assert any("(lens-tiny.png)" in line for line in lines)
    rows = demo_section.as_dicts([report])
    assert len(rows) == 2 * LAYERS and {"model", "lens", "layer", "kl_nats"} <= set(rows[0])


# ---------------------------------------------------------------------- CLI, torchrun
def test_torchrun_two_processes_train_the_lens_one_process_trains(tmp_path, capsys):
    """``torchrun`` with two CPU ranks (gloo) through the CLI, against :func:`train` in this
    process on the same model and text; then ``lens eval`` and ``lens plot`` on the result."""
    folder = tmp_path / "model"
    model = _build("mamba", hidden=16, layers=3)
    model.save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    text = "".join(chr(c) for c in torch.randint(32, 127, (700,)).tolist())
    (tmp_path / "text.txt").write_text(text)
    # 10 windows per step: ranks take 5 each, in passes of 2 (2 + 2 + 1)
    config = TrainConfig(steps=3, tokens_per_step=10 * 12, seq_len=12, batch_size=2, seed=3)
    flags = _config_flags(config)
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"),
        *("--standalone", "-m", "statetap.cli", "lens", "train"),
        *("--model", str(folder), "--text-file", str(tmp_path / "text.txt")),
        *("--out", str(tmp_path / "lens"), "--device", "cpu", *flags),
    ]
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONSAFEPATH="1")
    run = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]

    stream, _ = token_stream(TOKENIZER, [text])
    single = TunedLens(model)
    train(single, stream, config, progress=False)
    distributed = TunedLens.load(tmp_path / "lens", model)
    for got, want in zip(distributed.translators.parameters(), single.translators.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert distributed.meta["train"] == dataclasses.asdict(config)
    assert distributed.meta["model"] == str(folder)

    arguments = ["--lens", str(tmp_path / "lens"), "--text-file", str(tmp_path / "text.txt")]
    assert main(["lens", "eval", *arguments, "--windows", "4"]) == 0
    assert "| tuned | 0 |" in capsys.readouterr().out
    evaluation = LensEvaluation.load(tmp_path / "lens" / "evaluation.json")
    assert evaluation.tokens == 4 * 12 and evaluation.meta["model"] == str(folder)
    assert main(["lens", "plot", "--lens", str(tmp_path / "lens"), "--prompt", "abc"]) == 0
    for name in ("bits-per-byte.png", "trajectory-tuned.png", "trajectory-logit.png"):
        assert (tmp_path / "lens" / name).exists()


def test_cli_trains_on_a_dataset_column_and_refuses_a_wrong_corpus(tmp_path, capsys):
    """``lens train --dataset --text-field`` on a random model folder trains on that column's
    texts (the same translators as :func:`train` on them), after printing the recipe's token
    count and an estimate; a JSONL as ``--text-file``, JSON rows in a text file and a non-zoo
    model without a corpus are refused."""
    folder = tmp_path / "model"
    model = _build("mamba", hidden=16, layers=2)
    model.save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    texts = ["".join(chr(c) for c in torch.randint(32, 127, (n,)).tolist()) for n in (90, 70, 80)]
    rows = [dict(body=text, other=len(text)) for text in texts]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainConfig(steps=2, tokens_per_step=4 * 12, seq_len=12, batch_size=2, seed=1)
    flags = _config_flags(config)
    train_line = ["lens", "train", "--model", str(folder), "--out", str(tmp_path / "lens")]
    dataset = ["--dataset", str(tmp_path / "rows.jsonl"), "--text-field", "body"]
    assert main([*train_line, *dataset, *flags]) == 0
    printed = capsys.readouterr().out
    stream, _ = token_stream(TOKENIZER, texts)
    assert f"= {2 * 48} tokens" in printed and f"over {len(stream)} tokens" in printed
    assert "estimated" in printed
    single = TunedLens(model)
    train(single, stream, config, progress=False)
    trained = TunedLens.load(tmp_path / "lens", model)
    for got, want in zip(trained.translators.parameters(), single.translators.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert trained.meta["identity"]["tokenizer"]["class"] == "ByT5Tokenizer"
    assert main(["lens", "eval", "--lens", str(tmp_path / "lens"), *dataset]) == 0
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit_:  # argparse: a usage error
        main([*train_line, "--text-file", str(tmp_path / "rows.jsonl")])
    assert exit_.value.code == 2
    assert "pass it as --dataset" in capsys.readouterr().err
    (tmp_path / "rows.txt").write_text((tmp_path / "rows.jsonl").read_text())
    assert main([*train_line, "--text-file", str(tmp_path / "rows.txt")]) != 0
    assert "holds JSON rows: pass it as --dataset" in capsys.readouterr().err
    assert main(train_line) != 0
    assert "is not a zoo text model: give its corpus" in capsys.readouterr().err


# ---------------------------------------------------------------------- acceptance (slow)
@pytest.mark.slow
@pytest.mark.parametrize("name", ["text-mamba", "text-rwkv4"])
def test_tuned_lens_beats_the_logit_lens_on_zoo_text_models(name):
    """The issue's acceptance: the zoo's byte-level LMs (trained on first use), the default
    recipe scaled to them (:data:`ZOO_RECIPE`), KL to the final layer on held-out text."""
    from statetap import zoo

    model, _ = zoo.load(name, progress=False)
    train_stream, held_out, bytes_per_token = zoo_corpus(name)
    lens = TunedLens(model)
    losses = train(lens, train_stream, ZOO_RECIPE, progress=False)
    result = evaluate(lens, held_out, seq_len=ZOO_RECIPE.seq_len, max_windows=256, batch_size=64)
    print(f"{name}: KL {losses[0]:.4f} -> {losses[-1]:.4f}\n{result.markdown()}")
    tuned, logit = result.kl
    assert all(t < l for t, l in zip(tuned[:-1], logit[:-1])), result.markdown()
    assert result.final_layer_ok and bytes_per_token == 1.0
