"""Recipes: everything that determines a zoo model's weights, one frozen record per model.

A recipe names the architecture and its sizes, the task and its data, and the optimisation
(steps, batch, learning rate, seed). Two runs of one recipe on one machine give bit-identical
weights, so the cache keys its entries by a hash of the recipe (``statetap.zoo.cache``).

Tasks:

- ``"quirky"``: Mallen et al.'s quirky addition (``statetap.zoo.quirky``): the prompt
  ``"{a} + {b} = {s}. {character}:"`` is answered ``" True"``/``" False"``, Alice by the truth,
  Bob by his sloppy sum. Trained on the answer token of both characters' prompts of each
  equation; with ``arithmetic_weight > 0`` also on next-token prediction of the true sum after
  ``" = "`` in ``"{a} + {b} = {a + b}"`` (the arithmetic a pretrained base model already knows
  before its quirky fine-tuning in the paper).
- ``"text"``: a byte-level LM on the Python documentation every CPython carries
  (``statetap.zoo.corpus``), trained on next-byte prediction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ARCHITECTURES = ("mamba", "mamba2", "rwkv4", "rwkv7")
TASKS = ("quirky", "text")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How one zoo model is built and trained; every field enters the cache key.

    Model fields apply to the architectures named beside them; the others ignore them.
    """

    name: str
    arch: str  # one of ARCHITECTURES: transformers Mamba / Mamba2 / Rwkv, statetap Rwkv7
    task: str  # one of TASKS
    # model
    hidden_size: int
    num_layers: int
    state_size: int = 16  # mamba, mamba2: N
    expand: int = 2  # mamba, mamba2: inner width = expand * hidden_size
    conv_kernel: int = 4  # mamba, mamba2
    head_dim: int = 16  # mamba2: P (heads = expand * hidden_size / head_dim); rwkv7: head size
    chunk_size: int = 16  # mamba2: SSD chunk length of the torch path
    ffn_mult: int = 4  # rwkv4, rwkv7: channel-mix width = ffn_mult * hidden_size
    lora_rank: int = 16  # rwkv7: rank of the decay, in-context rate and value LoRAs (gate: 2x)
    # quirky data
    max_digits: int = 2  # summands in [1, 10**max_digits - 1]
    train_equations: int = 0  # each gives an Alice and a Bob prompt
    test_equations: int = 0  # held-out equations (no (a, b) pair shared with training)
    arithmetic_weight: float = 0.0  # weight of the true-sum next-token loss
    # the first steps grade every prompt, Bob's too, by the truth: the truthful base model
    # that Mallen et al. fine-tune into a quirky one
    truthful_steps: int = 0
    # text data
    seq_len: int = 128  # training window, bytes
    held_out: float = 0.05  # fraction of documents held out
    stdlib_files: int | None = None  # stdlib sources whose docstrings join the corpus; None: all
    eval_windows: int = 64  # held-out windows of seq_len bytes scored for bits per byte
    # optimisation (AdamW, linear warm-up then cosine decay to 0, gradient norm clipped at 1)
    steps: int
    batch_size: int  # sequences per step (quirky: prompts, two per equation)
    lr: float
    warmup: int = 50
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        for field in ("hidden_size", "num_layers", "steps", "batch_size", "seq_len"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.task == "quirky":
            if self.train_equations < 1 or self.test_equations < 1:
                raise ValueError(
                    "a quirky recipe needs train_equations >= 1 and test_equations >= 1"
                )
            if self.batch_size % 2:
                raise ValueError(
                    f"quirky batch_size counts prompts, two per equation: got {self.batch_size}"
                )
        if self.arch == "mamba2" and (self.expand * self.hidden_size) % self.head_dim:
            raise ValueError("mamba2: expand * hidden_size must be a multiple of head_dim")
        if self.arch == "rwkv7" and self.hidden_size % self.head_dim:
            raise ValueError("rwkv7: hidden_size must be a multiple of head_dim")
        if not 0.0 < self.held_out < 1.0:
            raise ValueError(f"held_out must be in (0, 1), got {self.held_out}")


def short(recipe: Recipe) -> Recipe:
    """A tiny, few-step variant of ``recipe`` (same architecture and task) for tests and CI:
    trains in about a second; its figures mean nothing."""
    return dataclasses.replace(
        recipe,
        name=f"{recipe.name}-short",
        hidden_size=16,
        num_layers=2,  # transformers' RWKV initialisation needs at least 2
        state_size=4,
        head_dim=8,
        chunk_size=8,
        ffn_mult=2,
        lora_rank=4,
        train_equations=min(recipe.train_equations, 48),
        test_equations=min(recipe.test_equations, 16),
        seq_len=min(recipe.seq_len, 32),
        stdlib_files=0,
        eval_windows=4,
        steps=3,
        batch_size=8,
        warmup=1,
    )


_QUIRKY = dict(task="quirky", max_digits=2, train_equations=6000, test_equations=1000)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="quirky-mamba",
            arch="mamba",
            hidden_size=64,
            num_layers=2,
            state_size=4,
            arithmetic_weight=1.0,
            steps=1800,
            batch_size=128,
            lr=5e-3,
            **{**_QUIRKY, "train_equations": 8800},  # Mamba-1 memorises 6000: 92 % held out
        ),
        Recipe(
            name="quirky-rwkv4",
            arch="rwkv4",
            hidden_size=64,
            num_layers=2,
            arithmetic_weight=1.0,
            steps=1100,  # 800 steps: 93.5 % Alice, 94.8 % Bob held out
            # a truthful start: without it Alice-trained probes did not transfer to Bob's
            # prompts (docs/elk.md); for quirky-mamba it lowered accuracy and transfer
            truthful_steps=400,
            batch_size=128,
            lr=3e-3,
            **_QUIRKY,
        ),
        Recipe(
            name="quirky-mamba2",
            arch="mamba2",
            hidden_size=64,
            num_layers=2,
            state_size=16,
            arithmetic_weight=1.0,
            steps=1500,
            batch_size=128,
            lr=3e-3,
            **_QUIRKY,
        ),
        Recipe(
            name="quirky-rwkv7",
            arch="rwkv7",
            hidden_size=64,
            num_layers=2,
            head_dim=16,
            arithmetic_weight=1.0,
            steps=600,
            truthful_steps=200,
            batch_size=128,
            lr=3e-3,
            **_QUIRKY,
        ),
        Recipe(
            name="text-mamba",
            arch="mamba",
            task="text",
            hidden_size=64,
            num_layers=2,
            state_size=8,
            seq_len=64,
            steps=300,
            batch_size=32,
            lr=3e-3,
        ),
        Recipe(
            name="text-rwkv4",
            arch="rwkv4",
            task="text",
            hidden_size=64,
            num_layers=2,
            seq_len=64,
            steps=300,
            batch_size=32,
            lr=3e-3,
        ),
        Recipe(
            name="text-rwkv7",
            arch="rwkv7",
            task="text",
            hidden_size=64,
            num_layers=2,
            head_dim=16,
            seq_len=64,
            steps=300,
            batch_size=32,
            lr=3e-3,
        ),
    )
}
