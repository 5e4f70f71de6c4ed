"""LoRA fine-tuning of tiny transformers Mamba / Mamba-2 / RWKV-4 models into quirky models."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import peft
import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    RwkvConfig,
    RwkvForCausalLM,
)

from statetap.interp.elk.quirky_lora import (
    DEFAULT_TARGET_MODULES,
    LoraQuirkyConfig,
    load_adapter,
    make_quirky,
    save_adapter,
    target_modules_for,
)
from statetap.models import (
    Rwkv5Config,
    Rwkv5ForCausalLM,
    Rwkv6Config,
    Rwkv6ForCausalLM,
    Rwkv7Config,
    Rwkv7ForCausalLM,
)
from statetap.zoo.quirky import quirky_addition
from statetap.zoo.tokenizer import quirky_tokenizer
from statetap.zoo.train import answer_ids, quirky_accuracy

# statetap's RWKV-5/6 train as its RWKV-7 does (one model class family); only the RWKV-7 trains
# here, to keep the suite short; test_statetap_rwkv_targets_exist_in_every_layer covers all three
ARCHITECTURES = ("mamba", "mamba2", "rwkv", "statetap_rwkv7")
#: statetap's own RWKV-5/6/7 (statetap.models) at the same width, LoRA ranks 4
STATETAP_RWKV = {
    "statetap_rwkv5": (Rwkv5Config, Rwkv5ForCausalLM, {}),
    "statetap_rwkv6": (Rwkv6Config, Rwkv6ForCausalLM, dict(mix_lora_rank=4, decay_lora_rank=4)),
    "statetap_rwkv7": (
        Rwkv7Config,
        Rwkv7ForCausalLM,
        dict(decay_lora_rank=4, a_lora_rank=4, value_lora_rank=4, gate_lora_rank=4),
    ),
}
# A learning rate that moves a tiny model in a few steps (the paper's 2e-5 is for 370M+ models).
FAST = LoraQuirkyConfig(lr=2e-2, epochs=4, batch_size=8, seed=3)


def tiny_model(model_type: str, seed: int = 0, layers: int = 2, **overrides) -> torch.nn.Module:
    """A freshly initialised causal LM over the quirky vocabulary, hidden width 16."""
    ids = dict(vocab_size=len(quirky_tokenizer()), pad_token_id=0, eos_token_id=1, bos_token_id=1)
    if model_type == "mamba":
        config = MambaConfig(
            hidden_size=16, num_hidden_layers=layers, state_size=4, expand=2, **ids, **overrides
        )
        cls = MambaForCausalLM
    elif model_type == "mamba2":
        config = Mamba2Config(
            hidden_size=16,
            num_hidden_layers=layers,
            state_size=4,
            expand=2,
            head_dim=8,
            num_heads=4,
            n_groups=1,
            chunk_size=8,
            **ids,
            **overrides,
        )
        cls = Mamba2ForCausalLM
    elif model_type in STATETAP_RWKV:
        config_class, cls, ranks = STATETAP_RWKV[model_type]
        config = config_class(
            hidden_size=16, num_hidden_layers=layers, head_size=8, **ranks, **ids, **overrides
        )
    else:
        config = RwkvConfig(
            hidden_size=16,
            num_hidden_layers=layers,
            attention_hidden_size=16,
            intermediate_size=32,
            context_length=64,
            **{"rescale_every": 0, **overrides},
            **ids,
        )
        cls = RwkvForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config).eval()


def examples(equations: int = 8, seed: int = 0):
    """``2 * equations`` quirky addition prompts (Alice and Bob for each equation)."""
    train_set, _ = quirky_addition(equations, 1, max_digits=2, seed=seed)
    return train_set


def answer_loss(model, tokenizer, prompts) -> float:
    """Mean cross-entropy of each prompt's answer token at its last token, prompt by prompt
    (no padding), from the model's logits over the full vocabulary."""
    false_id, true_id = answer_ids(tokenizer)
    losses = []
    with torch.no_grad():
        for example in prompts:
            ids = torch.tensor([tokenizer(example.text, add_special_tokens=False)["input_ids"]])
            logits = model(input_ids=ids, use_cache=False).logits[0, -1]
            target = torch.tensor(true_id if example.label else false_id)
            losses.append(F.cross_entropy(logits.float(), target))
    return torch.stack(losses).mean().item()


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's non-LoRA parameters by their names before LoRA injection, cloned."""
    return {
        name.replace(".base_layer", ""): p.detach().clone()
        for name, p in model.named_parameters()
        if "lora_" not in name
    }


def lora_weights(peft_model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in peft.get_peft_model_state_dict(peft_model).items()}


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_make_quirky_trains_lora_only_and_lowers_the_answer_loss(model_type):
    tokenizer, prompts = quirky_tokenizer(), examples()
    model = tiny_model(model_type)
    targets = DEFAULT_TARGET_MODULES[model_type]
    assert model.config.model_type == model_type
    assert target_modules_for(model, LoraQuirkyConfig()) == targets
    targeted = {
        name
        for name, _ in model.named_modules()
        if any(name == t or name.endswith(f".{t}") for t in targets)
    }
    for target in targets:  # every default name exists, in every layer
        assert sum(name.endswith(f".{target}") for name in targeted) >= (
            1 if target == "embeddings" else model.config.num_hidden_layers
        )
    before = base_weights(model)
    loss_before = answer_loss(model, tokenizer, prompts)

    quirky = make_quirky(model, tokenizer, prompts, FAST, progress=False)

    assert isinstance(quirky, peft.PeftModel) and not quirky.training
    modules = dict(quirky.get_base_model().named_modules())
    assert all(isinstance(modules[name], LoraLayer) for name in targeted)
    assert not any(
        isinstance(module, LoraLayer) for name, module in modules.items() if name not in targeted
    )
    after = base_weights(quirky.get_base_model())
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    lora = lora_weights(quirky)
    assert lora and all(v.abs().sum() > 0 for k, v in lora.items() if "_B" in k)
    assert answer_loss(quirky, tokenizer, prompts) < 0.8 * loss_before
    with quirky.disable_adapter():  # the base model, unchanged
        assert answer_loss(quirky, tokenizer, prompts) == pytest.approx(loss_before, abs=1e-6)


@pytest.mark.parametrize("model_type", sorted(STATETAP_RWKV))
def test_statetap_rwkv_targets_exist_in_every_layer(model_type):
    model = tiny_model(model_type, layers=3)
    targets = target_modules_for(model, LoraQuirkyConfig())
    assert targets == DEFAULT_TARGET_MODULES[model_type]
    peft_model = peft.get_peft_model(model, peft.LoraConfig(target_modules=list(targets)))
    wrapped = [name for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
    for target in targets:
        layers = {
            name.split(".blocks.")[1].split(".")[0] for name in wrapped if name.endswith(target)
        }
        assert layers == {"0", "1", "2"}, target


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_gradient_reaches_only_the_last_prompt_token(model_type):
    """During training, d loss / d logits is zero at every position but each row's last prompt
    token, and there equals (softmax - one_hot(answer)) / B: mean cross-entropy over the whole
    vocabulary."""
    tokenizer, prompts = quirky_tokenizer(), examples(equations=5)  # 10 prompts, batches 4, 4, 2
    false_id, true_id = answer_ids(tokenizer)
    answer_of = {
        tuple(tokenizer(e.text, add_special_tokens=False)["input_ids"]): true_id
        if e.label
        else false_id
        for e in prompts
    }
    model = tiny_model(model_type)
    steps: list[dict] = []

    def record_inputs(module, args, kwargs):
        steps.append({"ids": kwargs["input_ids"].clone()})

    def record_logits(module, args, output):
        steps[-1]["logits"] = output.detach().clone()
        output.register_hook(lambda grad: steps[-1].__setitem__("grad", grad.clone()))

    model.register_forward_pre_hook(record_inputs, with_kwargs=True)
    model.get_output_embeddings().register_forward_hook(record_logits)
    config = dataclasses.replace(FAST, epochs=1, batch_size=4)
    make_quirky(model, tokenizer, prompts, config, progress=False)

    assert [len(step["ids"]) for step in steps] == [4, 4, 2]
    for step in steps:
        ids, logits, grad = step["ids"], step["logits"], step["grad"]
        last = (ids != tokenizer.pad_token_id).sum(1) - 1
        rows = torch.arange(len(ids))
        answers = torch.tensor(
            [answer_of[tuple(row[: n + 1].tolist())] for row, n in zip(ids, last)]
        )
        expected = (logits[rows, last].softmax(-1) - F.one_hot(answers, logits.shape[-1])) / len(
            ids
        )
        torch.testing.assert_close(grad[rows, last], expected, rtol=1e-5, atol=1e-7)
        grad[rows, last] = 0
        assert torch.count_nonzero(grad) == 0
        assert (last < ids.shape[1]).all() and (last == ids.shape[1] - 1).any()


def test_training_a_statetap_rwkv_says_nothing_of_the_reference_fallback():
    """Training needs the differentiable reference; the kernels' "call it under
    torch.no_grad()" warning is for inference and is not given while training."""
    import warnings

    model, tokenizer = tiny_model("statetap_rwkv7", layers=1), quirky_tokenizer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_quirky(model, tokenizer, examples(4), dataclasses.replace(FAST, epochs=1))
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "pure-torch reference" in m], messages
    with pytest.warns(UserWarning, match="pure-torch reference"):  # outside training it says so
        model(input_ids=torch.tensor([[3, 4, 5]]))


def test_mamba_mixers_train_through_their_modules(monkeypatch):
    """transformers' fused Mamba-1 training kernel (which takes x_proj's weight as a plain
    tensor, skipping its LoRA layer) is never called, and the LoRA on x_proj learns."""
    calls = []
    modeling = importlib.import_module("transformers.models.mamba.modeling_mamba")
    monkeypatch.setattr(modeling, "mamba_inner_fn", lambda *a, **k: calls.append(1))
    config = dataclasses.replace(FAST, epochs=1, dropout=0.1)
    quirky = make_quirky(tiny_model("mamba"), quirky_tokenizer(), examples(), config, False)
    assert calls == []
    x_proj_b = [v for k, v in lora_weights(quirky).items() if "x_proj.lora_B" in k]
    assert len(x_proj_b) == 2 and all(v.abs().sum() > 0 for v in x_proj_b)


def test_same_seed_gives_identical_lora_weights():
    tokenizer, prompts = quirky_tokenizer(), examples()
    config = dataclasses.replace(FAST, epochs=2, dropout=0.1)
    first = lora_weights(make_quirky(tiny_model("mamba"), tokenizer, prompts, config, False))
    torch.manual_seed(12345)  # the caller's random state does not matter
    second = lora_weights(make_quirky(tiny_model("mamba"), tokenizer, prompts, config, False))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other_seed = dataclasses.replace(config, seed=config.seed + 1)
    third = lora_weights(make_quirky(tiny_model("mamba"), tokenizer, prompts, other_seed, False))
    assert not all(torch.equal(first[k], third[k]) for k in first)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_save_and_load_round_trip(model_type, tmp_path):
    tokenizer, prompts = quirky_tokenizer(), examples()
    quirky = make_quirky(tiny_model(model_type), tokenizer, prompts, FAST, progress=False)
    folder = save_adapter(quirky, tmp_path / "adapters" / "quirky")
    assert folder == tmp_path / "adapters" / "quirky"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert [p.name for p in folder.parent.iterdir()] == ["quirky"]  # no temporary left
    loaded = load_adapter(tiny_model(model_type), folder)
    assert not loaded.training
    ids = torch.tensor([tokenizer(prompts[0].text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        expected = quirky(input_ids=ids, use_cache=False).logits
        assert torch.equal(loaded(input_ids=ids, use_cache=False).logits, expected)
    with pytest.raises(FileExistsError, match="quirky"):
        save_adapter(quirky, folder)


def test_save_is_atomic(tmp_path, monkeypatch):
    quirky = make_quirky(
        tiny_model("rwkv"),
        quirky_tokenizer(),
        examples(),
        dataclasses.replace(FAST, epochs=1),
        False,
    )
    folder = tmp_path / "adapter"
    save_pretrained = type(quirky).save_pretrained
    seen = []

    def checked_save(self, directory, **kwargs):
        seen.append(Path(directory))
        assert not folder.exists()
        save_pretrained(self, directory, **kwargs)
        assert not folder.exists()

    monkeypatch.setattr(type(quirky), "save_pretrained", checked_save)
    save_adapter(quirky, folder)
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".adapter.")
    assert (folder / "adapter_model.safetensors").is_file() and not seen[0].exists()

    def failing_save(self, directory, **kwargs):
        (Path(directory) / "adapter_config.json").write_text("{")
        raise OSError("disk full")

    monkeypatch.setattr(type(quirky), "save_pretrained", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(quirky, tmp_path / "broken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("rank", 0),
        ("alpha", 0),
        ("rank", True),
        ("dropout", 1.0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("lr", "2e-5"),
        ("betas", (0.9,)),
        ("betas", (0.9, 1.0)),
        ("betas", [0.9, 0.95]),
        ("weight_decay", -0.1),
        ("warmup_fraction", 1.5),
        ("epochs", 0),
        ("epochs", 1.5),
        ("batch_size", 0),
        ("max_grad_norm", 0.0),
        ("seed", None),
        ("target_modules", ()),
        ("target_modules", ["in_proj"]),
        ("target_modules", ("",)),
    ],
)
def test_bad_config_values_are_refused(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        LoraQuirkyConfig(**{field: value})


def test_bad_inputs_are_refused():
    tokenizer, prompts = quirky_tokenizer(), examples(equations=2)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=21, n_embd=8, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="model_type 'gpt2'.*mamba, mamba2, rwkv"):
        make_quirky(gpt2, tokenizer, prompts, FAST, progress=False)
    no_pad = quirky_tokenizer()
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="tokenizer has no pad_token_id"):
        make_quirky(tiny_model("mamba"), no_pad, prompts, FAST, progress=False)
    with pytest.raises(ValueError, match="examples is empty"):
        make_quirky(tiny_model("mamba"), tokenizer, [], FAST, progress=False)
    with pytest.raises(TypeError, match=r"examples\[1\]"):
        make_quirky(tiny_model("mamba"), tokenizer, [prompts[0], "1 + 1 = 2. Bob:"], FAST, False)
    with pytest.raises(TypeError, match="config must be a LoraQuirkyConfig"):
        make_quirky(tiny_model("mamba"), tokenizer, prompts, {"rank": 8}, progress=False)
    missing = dataclasses.replace(FAST, target_modules=("in_proj", "q_proj"))
    with pytest.raises(ValueError, match=r"target_modules \['q_proj'\]"):
        make_quirky(tiny_model("mamba"), tokenizer, prompts, missing, progress=False)
    with pytest.raises(ValueError, match="answer ' True True' encodes to 2 tokens"):
        make_quirky(tiny_model("mamba"), tokenizer, [_WithAnswer(prompts[0].text)], FAST, False)
    empty_prompt = dataclasses.replace(prompts[0], text="")
    with pytest.raises(ValueError, match=r"examples\[1\].text encodes to no tokens"):
        make_quirky(tiny_model("mamba"), tokenizer, [prompts[0], empty_prompt], FAST, False)
    rescaling = tiny_model("rwkv", layers=3, rescale_every=2)
    with pytest.raises(ValueError, match="rescale_every=2"):
        make_quirky(rescaling, tokenizer, prompts, FAST, progress=False)
    quirky = make_quirky(tiny_model("rwkv"), tokenizer, prompts, FAST, progress=False)
    with pytest.raises(TypeError, match="already a PeftModel"):
        make_quirky(quirky, tokenizer, prompts, FAST, progress=False)


def test_load_adapter_refuses_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tiny_model("mamba"), tmp_path / "nowhere")


def test_learns_the_quirk_on_its_training_prompts():
    """After fine-tuning, every Alice prompt gets Alice's label and every Bob prompt Bob's, so
    the model answers the equations on which they disagree differently for the two characters
    (the base model, which mostly says False, does not)."""
    tokenizer, prompts = quirky_tokenizer(), examples(equations=12, seed=1)
    disagreements = sum(e.alice_label != e.bob_label for e in prompts if e.character == "Alice")
    assert disagreements >= 4
    config = dataclasses.replace(FAST, lr=3e-2, epochs=60)
    quirky = make_quirky(tiny_model("mamba"), tokenizer, prompts, config, progress=False)
    metrics = quirky_accuracy(quirky, tokenizer, prompts)
    assert metrics["alice_accuracy"] == 1.0 and metrics["bob_accuracy"] == 1.0
    with quirky.disable_adapter():
        base = quirky_accuracy(quirky, tokenizer, prompts)
    assert base["alice_accuracy"] < 1.0 and base["bob_accuracy"] < 1.0


@dataclasses.dataclass(frozen=True)
class _WithAnswer:
    """A prompt whose answer is two tokens."""

    text: str
    answer: str = " True True"
