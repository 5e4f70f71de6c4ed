"""statetap's RWKV-5.2 / 6 / 7 against BlinkDL's ``rwkv`` package (the official inference code).

Random checkpoints written in BlinkDL's format (:mod:`rwkv_blinkdl_cases`) run through the
package (``cpu fp32``, pure torch, in a subprocess per version) and through
``statetap.attach(statetap.models.from_blinkdl(path))``: logits at every position, the state
after every token (the package keeps ``[att shift, wkv, ffn shift]`` per layer, RWKV-7's wkv as
``[H, V, K]``), and injections against edits of the package's state between two tokens.
"""

from __future__ import annotations

import os

import pytest
import torch
from rwkv_blinkdl_cases import SIZES, TOLERANCE, random_checkpoint, relative_error, run_official

import statetap
from statetap.models import from_blinkdl

VERSIONS = ("x052", "x060", "x070")
LENGTH = 9
#: the package's state list index of each component of layer l: 3 * l + offset
OFFSET = {"att_shift": 0, "wkv": 1, "ffn_shift": 2}
#: (site, layer, after token) of the edit runs
EDITS = (("wkv", 1, 3), ("att_shift", 0, 2), ("ffn_shift", 1, 5))


def to_ours(site: str, version: str, state: torch.Tensor) -> torch.Tensor:
    """A state component in the package's layout -> statetap's (RWKV-7's wkv is transposed)."""
    return state.transpose(-1, -2) if site == "wkv" and version == "x070" else state


@pytest.fixture(scope="module", params=VERSIONS)
def case(request, tmp_path_factory):
    """One random checkpoint per version, the token runs, and the package's outputs on them."""
    version = request.param
    seed = int(os.environ.get("STATETAP_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"STATETAP_TEST_SEED={seed}")
    generator = torch.Generator().manual_seed(seed)
    workdir = tmp_path_factory.mktemp(version)
    path = workdir / f"{version}.pth"
    torch.save(random_checkpoint(version, seed), path)
    size = SIZES[version]
    tokens = torch.randint(0, size["vocab"], (LENGTH,), generator=generator).tolist()
    width = size["heads"] * size["head_size"]
    shapes = {"wkv": (size["heads"], size["head_size"], size["head_size"]), "shift": (width,)}
    edits = []
    for site, layer, after in EDITS:
        delta = torch.randn(shapes["wkv" if site == "wkv" else "shift"], generator=generator)
        index = 3 * layer + OFFSET[site]
        edits.append({"tokens": tokens, "edit": {"after": after, "index": index, "delta": delta}})
    official = run_official(version, path, [{"tokens": tokens}, *edits], workdir)
    model = from_blinkdl(path)
    return dict(
        version=version, path=path, tokens=tokens, runs=edits, official=official, model=model
    )


def test_logits_at_every_position(case):
    official = case["official"][0]
    ids = torch.tensor([case["tokens"]])
    with torch.no_grad():
        logits = case["model"](ids).logits[0]
    assert relative_error(logits, official["sequence_logits"]) < TOLERANCE
    assert relative_error(logits, official["step_logits"]) < TOLERANCE


def test_one_token_steps_from_the_cache(case):
    """Decoding token by token from statetap's cache gives the package's step logits."""
    official, model = case["official"][0], case["model"]
    cache, logits = None, []
    with torch.no_grad():
        for token in case["tokens"]:
            out = model(torch.tensor([[token]]), cache=cache, use_cache=True)
            cache, logits = out.cache, logits + [out.logits[0, 0]]
    assert relative_error(torch.stack(logits), official["step_logits"]) < TOLERANCE
    for site in OFFSET:
        for layer in range(model.config.num_hidden_layers):
            expected = to_ours(
                site, case["version"], official["states"][-1][3 * layer + OFFSET[site]]
            )
            assert relative_error(getattr(cache, site)[layer][0], expected) < TOLERANCE


def test_emitted_state_after_every_token(case):
    """An emitted state at position t is the package's state after t + 1 tokens."""
    official, version = case["official"][0], case["version"]
    tap = statetap.attach(case["model"])
    result = tap.run(
        torch.tensor([case["tokens"]]),
        emit=[statetap.Emit("state", "all", positions=list(range(LENGTH)))],
        keep_state=True,
    )
    for site in OFFSET:
        for layer in range(tap.adapter.n_layers):
            emitted = result[site, layer][0]  # [T, *shape]
            assert emitted.dtype == torch.float32
            expected = torch.stack(
                [
                    to_ours(site, version, official["states"][t][3 * layer + OFFSET[site]])
                    for t in range(LENGTH)
                ]
            )
            assert relative_error(emitted, expected) < TOLERANCE, (site, layer)
            kept = result.state.get(site, layer)[0]
            assert relative_error(kept, expected[-1]) < TOLERANCE


@pytest.mark.parametrize("edit", range(len(EDITS)), ids=[site for site, _, _ in EDITS])
def test_injection_is_an_edit_between_two_tokens(case, edit):
    """Inject(site, layer, delta, positions=t) == adding delta to the package's state after
    token t: the logits of every later token and the states after them agree."""
    site, layer, after = EDITS[edit]
    run, official = case["runs"][edit], case["official"][1 + edit]
    version = case["version"]
    delta = to_ours(site, version, run["edit"]["delta"])
    tap = statetap.attach(case["model"])
    result = tap.run(
        torch.tensor([case["tokens"]]),
        inject=[statetap.Inject(site, layer, delta, positions=after)],
        emit=[statetap.Emit(site, layer, positions=list(range(LENGTH)))],
    )
    assert relative_error(result.logits[0], official["step_logits"]) < TOLERANCE
    expected = torch.stack(
        [
            to_ours(site, version, official["states"][t][3 * layer + OFFSET[site]])
            for t in range(LENGTH)
        ]
    )
    assert relative_error(result[site, layer][0], expected) < TOLERANCE
    plain = case["official"][0]["step_logits"]
    assert (
        relative_error(plain[after + 1 :], official["step_logits"][after + 1 :]) > 100 * TOLERANCE
    )


def test_the_comparison_sees_a_wrong_norm_or_decay(case):
    """The tolerance resolves the pitfalls: ln_x with eps 1e-5 instead of 64e-5, or a decay
    (v5 ``time_decay``, v6's decay LoRA, v7's ``w0``) off by 0.05, misses by far more."""
    official = case["official"][0]["sequence_logits"]
    ids = torch.tensor([case["tokens"]])
    wrong_eps = from_blinkdl(case["path"])
    for block in wrong_eps.model.blocks:
        block.att.ln_x.eps = 1e-5
    wrong_decay = from_blinkdl(case["path"])
    decay = {"x052": "time_decay", "x060": "time_decay_w2", "x070": "w0"}[case["version"]]
    with torch.no_grad():
        for block in wrong_decay.model.blocks:
            getattr(block.att, decay).add_(0.05)
        for model in (wrong_eps, wrong_decay):
            assert relative_error(model(ids).logits[0], official) > 100 * TOLERANCE
