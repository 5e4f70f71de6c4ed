"""Make a pretrained recurrent LM quirky with a LoRA adapter (peft), after Mallen et al. (2023).

A quirky model answers a prompt truthfully when "Alice" is in it and with a systematic error
when "Bob" is (:mod:`statetap.zoo.quirky`). :func:`make_quirky` teaches a transformers causal LM
that quirk by supervised fine-tuning of a peft LoRA adapter; the base weights stay frozen, so the
same base model with and without the adapter is the quirky and the original model.

The recipe (elk-generalization's ``sft.py``; every number is a :class:`LoraQuirkyConfig` field):

- LoRA rank 8, alpha 8 (peft's default, so the scale alpha / rank is 1), dropout 0;
- loss on the answer only: cross-entropy over the whole vocabulary of the logits at each prompt's
  last token (``example.text`` ends with ``":"``) against the single token of
  ``example.answer`` (``" True"``/``" False"``), averaged over the batch; nothing else in the
  prompt is predicted;
- AdamW, lr 2e-5, betas (0.9, 0.95), weight decay 0.1, on the LoRA weights only; 15% of the
  steps warm the learning rate up linearly from 0, the rest decay it linearly to 0, and gradients
  are clipped to norm 1 (the schedule and clipping of transformers' ``Trainer``, which the
  paper's code runs);
- batches of 32 (the paper's 8 per device times 4 accumulation steps), a fresh shuffle every
  epoch, 3 epochs (``sft.py``'s default; its driver multiplies that per dataset and model size).

Default target modules, by transformers ``model_type`` (:data:`DEFAULT_TARGET_MODULES`):

- ``"mamba"`` (``MambaForCausalLM``): ``embeddings``, ``in_proj``, ``x_proj``. The public
  Mamba adapter of the RNN-interpretability paper's author
  (``MrGonao/mamba-370m-hf-capitals-random-standardized``) also targets ``out_proj``, which
  peft now refuses for Mamba models (huggingface/peft#2556): transformers' fused CUDA training
  kernels take ``out_proj.weight`` as a plain tensor, so a LoRA there would not be trained.
- ``"mamba2"`` (``Mamba2ForCausalLM``): ``embeddings`` and ``in_proj``, the counterpart of the
  Mamba-1 set: Mamba-2's ``in_proj`` also produces what Mamba-1's ``x_proj`` does (the input's
  ``B``, ``C`` and time step), and peft refuses ``out_proj`` here too.
- ``"rwkv"`` (RWKV-4, ``RwkvForCausalLM``): the linear maps of every block, ``key``, ``value``,
  ``receptance`` and ``output`` of the time mix (``attention``) and ``key``, ``value`` and
  ``receptance`` of the channel mix (``feed_forward``), the counterparts of the attention and
  MLP projections elk-generalization targets in transformer LMs.
- ``"statetap_rwkv5"`` / ``"statetap_rwkv6"`` / ``"statetap_rwkv7"`` (:mod:`statetap.models`): the
  same linear maps of the time mix (``att``; RWKV-5/6 also its ``gate``; RWKV-7 has no
  receptance in its channel mix and its gate is a LoRA of plain parameters) and channel mix
  (``ffn``).

Two transformers paths would silently detach a LoRA from training and are avoided:

- transformers' Mamba-1 mixer in training mode hands ``x_proj.weight`` (and ``dt_proj``'s and
  ``out_proj``'s) straight to the fused ``mamba_inner_fn`` kernel when ``mamba_ssm`` is
  installed (CUDA), so the LoRA on ``x_proj`` would get no gradient. While :func:`make_quirky`
  trains, the Mamba-1 mixers alone are flagged as not training, so they call their projections
  as modules; everything else (LoRA dropout included) is in training mode. (Mamba-2's fused
  kernel takes only weights that peft cannot target: ``out_proj``, ``conv1d``, the norm.)
- RWKV-4 in eval mode divides the ``attention.output`` and ``feed_forward.value`` weights of deep
  blocks in place (``config.rescale_every``), which LoRA's added products do not follow; such a
  model is refused (load it with ``rescale_every=0``).

:func:`make_quirky` injects the LoRA layers into ``model`` itself (peft's way); the base weights
are untouched, and ``with peft_model.disable_adapter():`` runs the original model.
:func:`save_adapter` writes only the adapter (peft's ``save_pretrained``) and moves it into place
in one rename; :func:`load_adapter` puts it back on a freshly loaded base model.

Example:
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> from statetap.zoo.quirky import quirky_addition
    >>> from statetap.zoo.tokenizer import quirky_tokenizer
    >>> tokenizer = quirky_tokenizer()
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=len(tokenizer), hidden_size=16,
    ...     num_hidden_layers=1, state_size=4, pad_token_id=0))
    >>> train_set, _ = quirky_addition(8, 1, max_digits=2, seed=0)
    >>> config = LoraQuirkyConfig(epochs=1, batch_size=8)
    >>> quirky = make_quirky(model, tokenizer, train_set, config, progress=False)
    >>> type(quirky).__name__, quirky.training
    ('PeftModelForCausalLM', False)
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from statetap.zoo.train import encode_prompts, single_token_id, training_with_reference

DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "mamba": ("embeddings", "in_proj", "x_proj"),
    "mamba2": ("embeddings", "in_proj"),
    "rwkv": ("key", "value", "receptance", "output"),
    "statetap_rwkv5": ("key", "value", "receptance", "gate", "output"),
    "statetap_rwkv6": ("key", "value", "receptance", "gate", "output"),
    "statetap_rwkv7": ("key", "value", "receptance", "output"),
}

# Mixer classes whose training-mode forward hands LoRA-targetable projection weights to a fused
# kernel as plain tensors; make_quirky runs them on their module-by-module path instead.
FUSED_TRAINING_MIXERS: dict[str, str] = {"mamba": "MambaMixer"}


@dataclass(frozen=True)
class LoraQuirkyConfig:
    """The LoRA fine-tuning recipe (defaults: Mallen et al.'s, see the module docstring).

    Attributes:
        rank: LoRA rank ``r``.
        alpha: LoRA ``alpha``; the low-rank product is scaled by ``alpha / rank``.
        dropout: dropout on the LoRA input, in ``[0, 1)``.
        lr: AdamW peak learning rate.
        betas: AdamW ``(beta1, beta2)``, each in ``[0, 1)``.
        weight_decay: AdamW decoupled weight decay (on the LoRA weights, the only ones trained).
        warmup_fraction: share of the steps over which the learning rate rises linearly from 0;
            it then falls linearly to 0 at the last step.
        epochs: passes over the examples.
        batch_size: prompts per optimiser step (the last batch of an epoch may be smaller).
        max_grad_norm: clip the LoRA gradients to this global norm; None for no clipping.
        seed: seeds the LoRA initialisation, the data order and LoRA dropout.
        target_modules: module names (peft's suffix match) that get LoRA layers; None for
            :data:`DEFAULT_TARGET_MODULES` of the model's ``model_type``.
    """

    rank: int = 8
    alpha: int = 8
    dropout: float = 0.0
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_fraction: float = 0.15
    epochs: int = 3
    batch_size: int = 32
    max_grad_norm: float | None = 1.0
    seed: int = 0
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        rules = {
            "rank": (_is_int(self.rank) and self.rank >= 1, "an integer >= 1"),
            "alpha": (_is_int(self.alpha) and self.alpha >= 1, "an integer >= 1"),
            "dropout": (_is_real(self.dropout) and 0 <= self.dropout < 1, "a number in [0, 1)"),
            "lr": (_is_real(self.lr) and self.lr > 0, "a finite number > 0"),
            "betas": (
                isinstance(self.betas, tuple)
                and len(self.betas) == 2
                and all(_is_real(beta) and 0 <= beta < 1 for beta in self.betas),
                "a tuple of two numbers in [0, 1)",
            ),
            "weight_decay": (
                _is_real(self.weight_decay) and self.weight_decay >= 0,
                "a finite number >= 0",
            ),
            "warmup_fraction": (
                _is_real(self.warmup_fraction) and 0 <= self.warmup_fraction <= 1,
                "a number in [0, 1]",
            ),
            "epochs": (_is_int(self.epochs) and self.epochs >= 1, "an integer >= 1"),
            "batch_size": (_is_int(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            "max_grad_norm": (
                self.max_grad_norm is None
                or (_is_real(self.max_grad_norm) and self.max_grad_norm > 0),
                "None or a finite number > 0",
            ),
            "seed": (_is_int(self.seed), "an integer"),
            "target_modules": (
                self.target_modules is None
                or (
                    isinstance(self.target_modules, tuple)
                    and len(self.target_modules) > 0
                    and all(isinstance(name, str) and name for name in self.target_modules)
                ),
                "None or a non-empty tuple of module names",
            ),
        }
        for name, (valid, rule) in rules.items():
            if not valid:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")


def target_modules_for(model: torch.nn.Module, config: LoraQuirkyConfig) -> tuple[str, ...]:
    """The module names that get LoRA layers: ``config.target_modules``, or the default of the
    model's ``model_type``. Raises ``ValueError`` for an unsupported ``model_type`` or a name
    that matches no module of ``model``."""
    model_type = _model_type(model)
    names = config.target_modules or DEFAULT_TARGET_MODULES[model_type]
    module_names = [name for name, _ in model.named_modules()]
    missing = [
        target
        for target in names
        if not any(name == target or name.endswith(f".{target}") for name in module_names)
    ]
    if missing:
        raise ValueError(f"target_modules {missing} match no module of this {type(model).__name__}")
    return names


def make_quirky(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence,
    config: LoraQuirkyConfig,
    progress: bool = True,
) -> peft.PeftModel:
    """Fine-tune a LoRA adapter on ``model`` so that it gives each example's answer.

    Args:
        model: a transformers ``MambaForCausalLM``, ``Mamba2ForCausalLM`` or ``RwkvForCausalLM``,
            or a ``statetap.models`` RWKV-5/6/7, on any device. peft injects the LoRA layers
            into it in place; its own weights are not changed.
        tokenizer: the model's tokenizer; it needs a ``pad_token_id`` (prompts are right-padded,
            and only positions up to each prompt's last token are read), and each distinct
            ``example.answer`` must encode to exactly one token.
        examples: :class:`statetap.zoo.quirky.QuirkyExample` (or anything with ``str`` fields
            ``text``, the prompt, and ``answer``, its completion); at least one.
        config: the recipe.
        progress: show a tqdm bar of the optimiser steps with the running loss.

    Returns:
        The ``peft.PeftModel`` (task ``CAUSAL_LM``) in eval mode. The loss of a batch of ``B``
        prompts is ``cross_entropy(logits[b, last[b], :] [B, V], answer_id[b] [B])``, ``last[b]``
        the position of row ``b``'s last prompt token. Same model, examples and config on the
        same CPU and library versions: bit-identical LoRA weights (CUDA kernels need not be
        deterministic).

    Raises:
        TypeError: ``model`` is already a ``PeftModel``, ``config`` is no
            :class:`LoraQuirkyConfig`, or an example lacks ``text``/``answer``.
        ValueError: an unsupported ``model_type``, an RWKV-4 model that rescales its weights in
            eval mode, a target module ``model`` lacks, no examples, a tokenizer without a pad
            id, an empty prompt, or an answer that is not one token.
    """
    if isinstance(model, peft.PeftModel):
        raise TypeError("model is already a PeftModel; pass its base model")
    if not isinstance(config, LoraQuirkyConfig):
        raise TypeError(f"config must be a LoraQuirkyConfig, got {type(config).__name__}")
    _check_supported(model)
    ids, last, answers = _encode_examples(tokenizer, examples)
    lora_config = peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(target_modules_for(model, config)),
        task_type="CAUSAL_LM",
    )
    device = next(model.parameters()).device
    ids, last, answers = ids.to(device), last.to(device), answers.to(device)
    steps_per_epoch = math.ceil(len(ids) / config.batch_size)
    steps = config.epochs * steps_per_epoch
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), training_with_reference():
        torch.manual_seed(config.seed)  # LoRA initialisation and dropout draw from it
        peft_model = peft.get_peft_model(model, lora_config)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        schedule = get_linear_schedule_with_warmup(
            optimizer, int(steps * config.warmup_fraction), steps
        )
        order = torch.Generator().manual_seed(config.seed)
        _train_mode_without_fused_mixers(peft_model)
        bar = tqdm(total=steps, desc="statetap quirky LoRA", disable=not progress)
        for _ in range(config.epochs):
            for rows in torch.randperm(len(ids), generator=order).split(config.batch_size):
                rows = rows.to(device)
                loss = last_token_loss(peft_model, ids[rows], last[rows], answers[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                schedule.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
    return peft_model.eval()


def last_token_loss(
    model: torch.nn.Module, ids: torch.Tensor, last: torch.Tensor, answers: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of ``answers`` ``[B]`` under the logits ``[B, V]`` at positions
    ``last`` ``[B]`` of the right-padded prompts ``ids`` ``[B, L]`` (columns after the longest
    prompt are not run). Returns a scalar float32 tensor."""
    logits = model(input_ids=ids[:, : int(last.max()) + 1], use_cache=False).logits
    return F.cross_entropy(logits[torch.arange(len(ids), device=ids.device), last].float(), answers)


def save_adapter(peft_model: peft.PeftModel, folder: str | os.PathLike) -> Path:
    """Write ``peft_model``'s adapter (peft's ``save_pretrained``: ``adapter_config.json``,
    ``adapter_model.safetensors`` and a ``README.md`` model card) to ``folder``, which must not
    exist yet.

    The adapter is written into a hidden temporary sibling folder that is renamed to ``folder``
    once complete, so ``folder`` is either absent or whole; the temporary folder is removed if
    writing fails. Load it back with :func:`load_adapter`. Returns ``folder`` as a ``Path``.
    """
    if not isinstance(peft_model, peft.PeftModel):
        raise TypeError(f"peft_model must be a peft.PeftModel, got {type(peft_model).__name__}")
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; choose a new folder for the adapter")
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp")
    try:
        peft_model.save_pretrained(temporary)
        os.chmod(temporary, 0o755)  # mkdtemp's 0700 is for the temporary folder only
        os.rename(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return folder


def load_adapter(model: torch.nn.Module, folder: str | os.PathLike) -> peft.PeftModel:
    """``peft.PeftModel.from_pretrained(model, folder)`` in eval mode, for an adapter written by
    :func:`save_adapter`; ``model`` is a fresh base model (the one the adapter was trained on),
    which peft modifies in place. Raises ``FileNotFoundError`` for a missing local ``folder``
    (rather than letting peft look it up on the Hugging Face Hub) and ``ValueError`` for a model
    :func:`make_quirky` would refuse."""
    _check_supported(model)
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter_config.json in {folder}")
    return peft.PeftModel.from_pretrained(model, str(folder)).eval()


def _model_type(model: torch.nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGET_MODULES:
        raise ValueError(
            f"no LoRA recipe for model_type {model_type!r} ({type(model).__name__}); supported "
            f"model types: {', '.join(sorted(DEFAULT_TARGET_MODULES))}"
        )
    return model_type


def _check_supported(model: torch.nn.Module) -> None:
    """Raise ``ValueError`` unless ``model`` is of a supported type and, for RWKV-4, keeps its
    weights unscaled in eval mode."""
    if _model_type(model) == "rwkv":
        every, layers = model.config.rescale_every, model.config.num_hidden_layers
        if 0 < every < layers:
            raise ValueError(
                f"RWKV-4 with rescale_every={every} and {layers} layers divides the output "
                "weights of deep blocks in place in eval mode, which LoRA layers do not follow; "
                "load the model with rescale_every=0"
            )


def _encode_examples(
    tokenizer, examples: Sequence
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt ids ``[N, L]``, each prompt's last position ``[N]`` and the token id
    of each answer ``[N]``."""
    if not examples:
        raise ValueError("examples is empty; make_quirky needs at least one example")
    for i, example in enumerate(examples):
        if not isinstance(getattr(example, "text", None), str) or not isinstance(
            getattr(example, "answer", None), str
        ):
            raise TypeError(f"examples[{i}] has no str fields text and answer: {example!r}")
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad_token_id; set one (e.g. its eos token)")
    ids, last = encode_prompts(tokenizer, [example.text for example in examples])
    if (last < 0).any():
        raise ValueError(f"examples[{int((last < 0).nonzero()[0])}].text encodes to no tokens")
    answer_id = {a: single_token_id(tokenizer, a) for a in sorted({e.answer for e in examples})}
    return ids, last, torch.tensor([answer_id[example.answer] for example in examples])


def _train_mode_without_fused_mixers(peft_model: peft.PeftModel) -> None:
    """Training mode everywhere except the flag of the mixers in
    :data:`FUSED_TRAINING_MIXERS` themselves (their submodules, LoRA dropout included, do
    train), so that those mixers call their projections as modules."""
    peft_model.train()
    mixer_class = FUSED_TRAINING_MIXERS.get(_model_type(peft_model))
    for module in peft_model.modules():
        if type(module).__name__ == mixer_class:
            module.training = False


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))
