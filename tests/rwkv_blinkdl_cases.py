"""Random BlinkDL RWKV-5.2 / 6 / 7 checkpoints, and the official package's outputs on them.

The checkpoints are written from the format (key names, shapes and order of BlinkDL's
RWKV-LM ``model.py``, see ``shared/research/rwkv_formats.md``), not from statetap's models, and
the weights are drawn so that every ingredient matters: decays spread over (0.05, 0.95), LoRAs
that move the decay and the mixes by O(1), and WKV outputs small enough per head that
``ln_x``'s eps (64e-5) shows in the logits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

#: tiny odd sizes per version: layers, heads, head size, vocabulary, channel-mix width, ranks
SIZES = {
    "x052": dict(layers=2, heads=3, head_size=5, vocab=37, ffn=41),
    "x060": dict(layers=2, heads=2, head_size=7, vocab=37, ffn=33, mix_rank=3, decay_rank=5),
    "x070": dict(layers=3, heads=3, head_size=5, vocab=37, ffn=60, ranks=(3, 4, 2, 6)),
}
#: the environment each version needs in the official package (read at its import)
ENVIRONMENT = {
    "x052": {"RWKV_V7_ON": "0", "RWKV_JIT_ON": "0"},
    "x060": {"RWKV_V7_ON": "0", "RWKV_JIT_ON": "0"},
    "x070": {"RWKV_V7_ON": "1", "RWKV_JIT_ON": "1"},
}


#: ||actual - expected|| / ||expected|| allowed between two float32 computations of the same
#: thing in another order of operations (chunks, segments, row layout, the official per-token
#: loops), through ln_x where a head's variance is small (by design, so that its eps shows)
TOLERANCE = 1e-5


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64."""
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = TOLERANCE):
    """Same shape, and a relative error (:func:`relative_error`) below ``tolerance``."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    error = relative_error(actual, expected)
    assert error < tolerance, f"relative error {error:.2e} (allowed {tolerance:.0e})"


def _uniform(generator, low: float, high: float, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _normal(generator, std: float, *shape: int) -> torch.Tensor:
    return std * torch.randn(shape, generator=generator)


def random_checkpoint(
    version: str, seed: int, sizes: dict | None = None
) -> dict[str, torch.Tensor]:
    """A BlinkDL state dict of ``version`` (``"x052"``, ``"x060"``, ``"x070"``) with random
    weights, keys in BlinkDL's module order (``ln1, ln2, ln0, att.*, ffn.*`` per block);
    ``sizes`` (default ``SIZES[version]``) has the keys of ``SIZES[version]``."""
    size = SIZES[version] if sizes is None else sizes
    g = torch.Generator().manual_seed(seed)
    heads, head_size = size["heads"], size["head_size"]
    width, ffn, vocab = heads * head_size, size["ffn"], size["vocab"]

    def linear(out: int, inp: int, gain: float = 1.0) -> torch.Tensor:
        return _normal(g, gain / inp**0.5, out, inp)

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.weight": 1 + _normal(g, 0.2, width),
            f"{prefix}.bias": _normal(g, 0.1, width),
        }

    sd = {"emb.weight": _normal(g, 1.0, vocab, width)}
    for i in range(size["layers"]):
        b = f"blocks.{i}."
        sd |= norm(b + "ln1") | norm(b + "ln2")
        if i == 0:
            sd |= norm(b + "ln0")
        a = b + "att."
        if version == "x052":
            for name in ("k", "v", "r", "g"):
                sd[f"{a}time_mix_{name}"] = _uniform(g, 0, 1, 1, 1, width)
            sd[a + "time_decay"] = _uniform(g, -3.0, 1.0, heads, head_size)
            sd[a + "time_faaaa"] = _normal(g, 0.5, heads, head_size)
        elif version == "x060":
            mix, decay = size["mix_rank"], size["decay_rank"]
            for name in ("x", "w", "k", "v", "r", "g"):
                sd[f"{a}time_maa_{name}"] = _uniform(g, 0, 1, 1, 1, width)
            sd[a + "time_maa_w1"] = _normal(g, 1.0 / width**0.5, width, 5 * mix)
            sd[a + "time_maa_w2"] = _normal(g, 0.5, 5, mix, width)
            sd[a + "time_decay"] = _uniform(g, -3.0, 1.0, 1, 1, width)
            sd[a + "time_decay_w1"] = _normal(g, 1.5 / width**0.5, width, decay)
            sd[a + "time_decay_w2"] = _normal(g, 0.5, decay, width)
            sd[a + "time_faaaa"] = _normal(g, 0.5, heads, head_size)
        if version in ("x052", "x060"):
            sd[a + "receptance.weight"] = linear(width, width)
            sd[a + "key.weight"] = linear(width, width)
            sd[a + "value.weight"] = linear(width, width, 0.05)  # small WKV output: eps shows
            sd[a + "output.weight"] = linear(width, width)
            sd[a + "gate.weight"] = linear(width, width)
            sd |= norm(a + "ln_x")
            f = b + "ffn."
            mix_names = (
                ("time_mix_k", "time_mix_r") if version == "x052" else ("time_maa_k", "time_maa_r")
            )
            for name in mix_names:
                sd[f + name] = _uniform(g, 0, 1, 1, 1, width)
            sd[f + "key.weight"] = linear(ffn, width)
            sd[f + "receptance.weight"] = linear(width, width)
            sd[f + "value.weight"] = linear(width, ffn)
        else:
            rank_w, rank_a, rank_v, rank_g = size["ranks"]
            for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
                sd[a + name] = _uniform(g, 0, 1, 1, 1, width)
            sd[a + "w0"] = _uniform(g, -2.5, 2.5, 1, 1, width)
            sd[a + "w1"] = _normal(g, 1.5 / width**0.5, width, rank_w)
            sd[a + "w2"] = _normal(g, 0.8, rank_w, width)
            sd[a + "a0"] = _normal(g, 0.5, 1, 1, width)
            sd[a + "a1"] = _normal(g, 1.0 / width**0.5, width, rank_a)
            sd[a + "a2"] = _normal(g, 0.5, rank_a, width)
            sd[a + "v0"] = _normal(g, 0.5, 1, 1, width)
            sd[a + "v1"] = _normal(g, 1.0 / width**0.5, width, rank_v)
            sd[a + "v2"] = _normal(g, 0.5, rank_v, width)
            sd[a + "g1"] = _normal(g, 1.0 / width**0.5, width, rank_g)
            sd[a + "g2"] = _normal(g, 0.5, rank_g, width)
            sd[a + "k_k"] = _uniform(g, 0.5, 1.5, 1, 1, width)
            sd[a + "k_a"] = _uniform(g, 0, 1, 1, 1, width)
            sd[a + "r_k"] = _normal(g, 0.5, heads, head_size)
            sd[a + "receptance.weight"] = linear(width, width)
            sd[a + "key.weight"] = linear(width, width)
            sd[a + "value.weight"] = linear(width, width, 0.05)
            sd[a + "output.weight"] = linear(width, width)
            sd |= norm(a + "ln_x")
            f = b + "ffn."
            sd[f + "x_k"] = _uniform(g, 0, 1, 1, 1, width)
            sd[f + "key.weight"] = linear(ffn, width)
            sd[f + "value.weight"] = linear(width, ffn)
    sd |= norm("ln_out")
    sd["head.weight"] = linear(vocab, width, 3.0)
    return sd


def run_official(version: str, checkpoint: Path, runs: list[dict], workdir: Path) -> list[dict]:
    """The official package's outputs (:mod:`rwkv_official`) for ``runs`` on ``checkpoint``
    (a ``.pth``), in a subprocess with the environment ``version`` needs."""
    spec, out = workdir / f"{version}-spec.pt", workdir / f"{version}-out.pt"
    torch.save({"model": str(checkpoint.with_suffix("")), "runs": runs}, spec)
    env = os.environ | {"RWKV_CUDA_ON": "0"} | ENVIRONMENT[version]
    script = Path(__file__).with_name("rwkv_official.py")
    done = subprocess.run(
        [sys.executable, str(script), str(spec), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the rwkv package failed:\n{done.stdout}\n{done.stderr}")
    return torch.load(out, weights_only=False)
