"""Train a zoo recipe with the model's own transformers torch path, deterministically.

Same recipe, same machine, same library versions: bit-identical weights. Initialisation draws
from torch's global generator inside ``torch.random.fork_rng`` seeded with ``recipe.seed``
(the caller's random state is left as it was); data order comes from a private
``torch.Generator``; nothing else is random (the models have no dropout).

- Quirky recipes: cross-entropy of the answer token (``" True"``/``" False"``) at each prompt's
  last position, for the Alice and the Bob prompt of every equation in the batch, plus
  ``recipe.arithmetic_weight`` times the next-token loss on the true sum's tokens in
  ``"{a} + {b} = {a + b}<eos>"``. Evaluated on held-out equations: Alice prompts against the
  truth, Bob prompts against Bob's rule (the larger of the two answer logits).
- Text recipes: next-byte cross-entropy on random windows of the training documents, evaluated
  as bits per byte on consecutive windows of the held-out documents.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from statetap.zoo import corpus, quirky
from statetap.zoo.recipes import Recipe
from statetap.zoo.tokenizer import byte_tokenizer, quirky_tokenizer
from statetap.zoo.training_path import training_path


@dataclass
class Trained:
    """A trained model (eval mode), its tokenizer and its held-out figures."""

    model: torch.nn.Module
    tokenizer: object
    metrics: dict


def build_tokenizer(recipe: Recipe):
    """The recipe's tokenizer: word-level for the quirky task, bytes (ByT5) for text."""
    return quirky_tokenizer() if recipe.task == "quirky" else byte_tokenizer()


def build_model(recipe: Recipe, vocab_size: int) -> torch.nn.Module:
    """A freshly initialised transformers causal LM for ``recipe``, seeded with ``recipe.seed``
    (the caller's global random state is restored afterwards)."""
    from transformers import (
        Mamba2Config,
        Mamba2ForCausalLM,
        MambaConfig,
        MambaForCausalLM,
        RwkvConfig,
        RwkvForCausalLM,
    )

    ids = dict(vocab_size=vocab_size, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    r = recipe
    if r.arch == "mamba":
        config = MambaConfig(
            hidden_size=r.hidden_size,
            num_hidden_layers=r.num_layers,
            state_size=r.state_size,
            expand=r.expand,
            conv_kernel=r.conv_kernel,
            **ids,
        )
        cls = MambaForCausalLM
    elif r.arch == "mamba2":
        config = Mamba2Config(
            hidden_size=r.hidden_size,
            num_hidden_layers=r.num_layers,
            state_size=r.state_size,
            expand=r.expand,
            conv_kernel=r.conv_kernel,
            head_dim=r.head_dim,
            num_heads=r.expand * r.hidden_size // r.head_dim,
            n_groups=1,
            chunk_size=r.chunk_size,
            **ids,
        )
        cls = Mamba2ForCausalLM
    elif r.arch == "rwkv4":
        config = RwkvConfig(
            hidden_size=r.hidden_size,
            num_hidden_layers=r.num_layers,
            attention_hidden_size=r.hidden_size,
            intermediate_size=r.ffn_mult * r.hidden_size,
            context_length=max(r.seq_len, 64),
            rescale_every=0,  # inference-time weight rescaling would edit the weights in place
            **ids,
        )
        cls = RwkvForCausalLM
    elif r.arch == "rwkv7":
        from statetap.models import Rwkv7Config, Rwkv7ForCausalLM

        config = Rwkv7Config(
            hidden_size=r.hidden_size,
            num_hidden_layers=r.num_layers,
            head_size=r.head_dim,
            intermediate_size=r.ffn_mult * r.hidden_size,
            decay_lora_rank=r.lora_rank,
            a_lora_rank=r.lora_rank,
            value_lora_rank=r.lora_rank,
            gate_lora_rank=2 * r.lora_rank,
            **ids,
        )
        cls = Rwkv7ForCausalLM
    else:  # Recipe validates arch; a new architecture must be added here explicitly
        raise ValueError(f"no model builder for arch {r.arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r.seed)
        return cls(config)


def train(recipe: Recipe, progress: bool = True) -> Trained:
    """Train ``recipe`` from scratch and evaluate it on held-out data.

    Returns the model in eval mode and ``metrics``: for quirky recipes ``alice_accuracy`` and
    ``bob_accuracy`` (held-out Alice prompts against the truth, Bob prompts against Bob's rule),
    their per-difficulty breakdown and ``held_out_prompts``; for text recipes
    ``bits_per_byte``; always ``train_seconds`` and ``final_loss`` (mean of the last 10% of
    steps).

    Training and evaluation run on one CPU thread (the caller's thread count is restored):
    RWKV-4's trained weights depend on the thread count (the order of some reductions; Mamba's
    do not), so a fixed count gives a recipe the same weights whatever the machine's core
    count and whether :mod:`statetap.zoo.prepare` trains several models side by side. Two
    trainings side by side on two threads each, on two cores, ran 20 times slower than on one
    thread each; one model gains only 1.3-1.4x from a second thread.
    """
    tokenizer = build_tokenizer(recipe)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with training_path(recipe.arch):
            if recipe.task == "quirky":
                model, metrics = _train_quirky(recipe, tokenizer, progress)
            else:
                model, metrics = _train_text(recipe, tokenizer, progress)
    finally:
        torch.set_num_threads(threads)
    metrics["train_seconds"] = round(time.perf_counter() - start, 2)
    return Trained(model.eval(), tokenizer, metrics)


def encode_prompts(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids ``[B, L]`` and each row's last prompt position ``[B]``."""
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = torch.full((len(rows), max(map(len, rows))), tokenizer.pad_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, torch.tensor([len(row) - 1 for row in rows])


def single_token_id(tokenizer, answer: str) -> int:
    """The id of ``answer``, which must encode to exactly one token (no special tokens).

    Raises:
        ValueError: ``answer`` encodes to another number of tokens.
    """
    tokens = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(tokens) != 1:
        raise ValueError(
            f"answer {answer!r} encodes to {len(tokens)} tokens, not one token of the tokenizer"
        )
    return tokens[0]


def answer_ids(tokenizer) -> tuple[int, int]:
    """Token ids ``(false_id, true_id)`` of ``" False"`` and ``" True"`` (each must be one
    token: :func:`single_token_id`)."""
    return single_token_id(tokenizer, quirky.ANSWERS[False]), single_token_id(
        tokenizer, quirky.ANSWERS[True]
    )


def choice_ids(tokenizer, choices: Sequence[tuple[str, str]]) -> torch.Tensor:
    """``[B, 2]`` token ids of each row's ``(false answer, true answer)`` (each one token:
    :func:`single_token_id`)."""
    known = {c: single_token_id(tokenizer, c) for c in dict.fromkeys(c for p in choices for c in p)}
    return torch.tensor([[known[false], known[true]] for false, true in choices], dtype=torch.long)


@torch.no_grad()
def answer_logits(
    model,
    tokenizer,
    texts: list[str],
    batch_size: int = 1024,
    choices: Sequence[tuple[str, str]] | None = None,
) -> torch.Tensor:
    """Logits ``[B, 2]`` of each prompt's false and true answer at its last position:
    ``choices[i]`` (default ``(" False", " True")`` for every prompt)."""
    ids_of = choice_ids(tokenizer, choices or [(quirky.ANSWERS[False], quirky.ANSWERS[True])])
    if choices is None:
        ids_of = ids_of.expand(len(texts), 2)
    elif len(choices) != len(texts):
        raise ValueError(f"choices has {len(choices)} rows for {len(texts)} texts")
    out = []
    for i in range(0, len(texts), batch_size):
        ids, last = encode_prompts(tokenizer, texts[i : i + batch_size])
        logits = model(input_ids=ids, use_cache=False).logits
        rows = torch.arange(len(ids))
        out.append(logits[rows, last].float().cpu().gather(1, ids_of[i : i + batch_size]))
    return torch.cat(out)


def quirky_accuracy(model, tokenizer, examples: list[quirky.QuirkyExample]) -> dict:
    """Held-out figures: accuracy of the answer (``" True"`` iff its logit is larger) on Alice
    prompts against ``alice_label`` and on Bob prompts against ``bob_label``, overall and by
    difficulty."""
    was_training = model.training
    model.eval()
    texts, choices = [e.text for e in examples], [e.choices for e in examples]
    predicted = answer_logits(model, tokenizer, texts, choices=choices).argmax(-1).bool()
    model.train(was_training)
    metrics: dict = {"held_out_prompts": len(examples)}
    for character in quirky.CHARACTERS:
        key = character.lower()
        by_difficulty: dict[str, list[bool]] = {}
        for e, p in zip(examples, predicted.tolist()):
            if e.character == character:
                by_difficulty.setdefault(str(e.difficulty), []).append(p == e.label)
        hits = [h for d in by_difficulty.values() for h in d]
        metrics[f"{key}_accuracy"] = sum(hits) / len(hits)
        metrics[f"{key}_accuracy_by_difficulty"] = {
            d: sum(h) / len(h) for d, h in sorted(by_difficulty.items())
        }
    return metrics


@torch.no_grad()
def bits_per_byte(model, stream: torch.Tensor, seq_len: int, windows: int) -> float:
    """Mean next-token cross-entropy in bits over the first ``windows`` consecutive windows of
    ``seq_len + 1`` tokens of ``stream`` ``[T]`` (each window predicts its last ``seq_len``
    tokens; a document's eos counts as one byte)."""
    was_training = model.training
    model.eval()
    n = min(windows, (len(stream) - 1) // seq_len)
    if n < 1:
        raise ValueError(f"held-out stream of {len(stream)} tokens is shorter than one window")
    starts = torch.arange(n) * seq_len
    batch = stream[starts[:, None] + torch.arange(seq_len + 1)]
    total = 0.0
    for i in range(0, n, 32):
        x = batch[i : i + 32]
        logits = model(input_ids=x[:, :-1], use_cache=False).logits.float()
        total += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
    model.train(was_training)
    return total / (n * seq_len) / math.log(2)


def _optimizer(recipe: Recipe, model: torch.nn.Module):
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=recipe.lr,
        betas=recipe.betas,
        weight_decay=recipe.weight_decay,
    )

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, recipe.warmup))
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, recipe.steps) / recipe.steps))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# the warning statetap's kernels give when an input requires a gradient (they are forward-only,
# so the pure-torch reference runs): in training that is the plan, not news
BACKWARD_FALLBACK = r"statetap: \w+ on \w+ runs the pure-torch reference"


@contextlib.contextmanager
def training_with_reference() -> Iterator[None]:
    """For the block, the kernels' fallback to the differentiable pure-torch reference
    (statetap's RWKV-5/6/7 layers call the kernels directly) passes without a warning per op:
    a training loop needs gradients, which only the reference gives. Other warnings show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=BACKWARD_FALLBACK, category=UserWarning)
        yield


def _loop(recipe: Recipe, model: torch.nn.Module, loss_of_step, progress: bool) -> float:
    """Run ``recipe.steps`` optimiser steps of ``loss_of_step(step) -> loss``; returns the mean
    loss of the last 10% of steps."""
    with training_with_reference():
        return _steps(recipe, model, loss_of_step, progress)


def _steps(recipe: Recipe, model: torch.nn.Module, loss_of_step, progress: bool) -> float:
    opt, schedule = _optimizer(recipe, model)
    model.train()
    tail: list[float] = []
    bar = tqdm(range(recipe.steps), desc=f"statetap.zoo {recipe.name}", disable=not progress)
    for step in bar:
        loss = loss_of_step(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if step >= recipe.steps - max(1, recipe.steps // 10):
            tail.append(loss.item())
        if step % 10 == 0 or step == recipe.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return sum(tail) / len(tail)


def quirky_split(recipe: Recipe) -> tuple[list[quirky.QuirkyExample], list[quirky.QuirkyExample]]:
    """The training and held-out prompts of a quirky recipe (Alice's then Bob's prompt of
    each equation; no equation in both)."""
    if recipe.task != "quirky":
        raise ValueError(f"recipe {recipe.name!r} is a {recipe.task} recipe, not a quirky one")
    return quirky.quirky_addition(
        recipe.train_equations,
        recipe.test_equations,
        max_digits=recipe.max_digits,
        seed=recipe.seed,
    )


def _train_quirky(recipe: Recipe, tokenizer, progress: bool):
    train_set, test_set = quirky_split(recipe)
    model = build_model(recipe, len(tokenizer))
    ids, last = encode_prompts(tokenizer, [e.text for e in train_set])
    false_id, true_id = answer_ids(tokenizer)
    answers = torch.tensor([true_id if e.label else false_id for e in train_set])
    truths = torch.tensor([true_id if e.alice_label else false_id for e in train_set])
    sums = _sum_targets(tokenizer, train_set[0::2])
    generator = torch.Generator().manual_seed(recipe.seed)
    per_step = recipe.batch_size // 2
    order = _epochs(recipe.train_equations, per_step, generator)

    def loss_of_step(step: int) -> torch.Tensor:
        eq = next(order)
        rows = torch.stack([2 * eq, 2 * eq + 1], dim=1).flatten()  # Alice and Bob prompts
        x, pos = ids[rows], last[rows]
        logits = model(input_ids=x[:, : int(pos.max()) + 1], use_cache=False).logits
        targets = truths if step < recipe.truthful_steps else answers
        loss = F.cross_entropy(logits[torch.arange(len(rows)), pos], targets[rows])
        if recipe.arithmetic_weight:
            x, y = sums[0][eq], sums[1][eq]
            logits = model(input_ids=x, use_cache=False).logits
            loss = loss + recipe.arithmetic_weight * F.cross_entropy(
                logits.flatten(0, 1), y.flatten(), ignore_index=-100
            )
        return loss

    final = _loop(recipe, model, loss_of_step, progress)
    metrics = quirky_accuracy(model, tokenizer, test_set)
    metrics["final_loss"] = final
    return model, metrics


def _sum_targets(tokenizer, equations: list[quirky.QuirkyExample]):
    """Inputs ``[E, L]`` of ``"{a} + {b} = {a + b}<eos>"`` and targets ``[E, L]`` that are the
    next token after ``" = "`` and -100 elsewhere."""
    texts = [f"{e.a} + {e.b} = {e.true_sum}" for e in equations]
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    equals = tokenizer.convert_tokens_to_ids(" = ")
    width = max(map(len, rows)) + 1
    x = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    y = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        row = row + [tokenizer.eos_token_id]
        x[i, : len(row)] = torch.tensor(row)
        start = row.index(equals)
        y[i, start : len(row) - 1] = torch.tensor(row[start + 1 :])
    return x[:, :-1], y[:, :-1]


def _epochs(n: int, per_step: int, generator: torch.Generator):
    """Endless batches of ``per_step`` indices below ``n``: shuffled epochs, no index twice in
    an epoch (a short last batch is dropped)."""
    if per_step > n:
        raise ValueError(f"a batch of {per_step} equations needs at least as many, got {n}")
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n - per_step + 1, per_step):
            yield perm[i : i + per_step]


def _train_text(recipe: Recipe, tokenizer, progress: bool):
    docs = corpus.documents(recipe.stdlib_files)
    train_docs, test_docs = corpus.split(docs, recipe.held_out, recipe.seed)
    stream, test_stream = corpus.encode(train_docs), corpus.encode(test_docs)
    if len(stream) <= recipe.seq_len + 1:
        raise ValueError(f"training stream of {len(stream)} bytes is shorter than one window")
    model = build_model(recipe, len(tokenizer))
    generator = torch.Generator().manual_seed(recipe.seed)
    window = torch.arange(recipe.seq_len + 1)

    def loss_of_step(step: int) -> torch.Tensor:
        starts = torch.randint(
            len(stream) - recipe.seq_len - 1, (recipe.batch_size,), generator=generator
        )
        x = stream[starts[:, None] + window]
        logits = model(input_ids=x[:, :-1], use_cache=False).logits
        return F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())

    final = _loop(recipe, model, loss_of_step, progress)
    metrics = {
        "bits_per_byte": bits_per_byte(model, test_stream, recipe.seq_len, recipe.eval_windows),
        "held_out_bytes": recipe.seq_len
        * min(recipe.eval_windows, (len(test_stream) - 1) // recipe.seq_len),
        "train_bytes": len(stream),
        "corpus_documents": len(docs),
        "final_loss": final,
    }
    return model, metrics
