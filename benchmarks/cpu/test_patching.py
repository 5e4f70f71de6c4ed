"""Activation patching on a random transformers Mamba (d 256, 4 layers, L 64): the full layer x
position sweep of every state component (``ssm`` and ``conv``, 512 patches) as
``statetap.interp.patching`` batches it, against two loops of one forward per patch:

* ``naive loop: tap.run per patch``: statetap's own fused pass over the whole prompt, the clean
  state ``set`` at its token by an ``Inject``;
* ``transformers: forward per patch, cache edited by hand``: what people run today with
  transformers alone (``MambaForCausalLM``'s own path): per position ``t`` the clean and the
  corrupted prefix ``0 .. t`` with ``use_cache=True`` (once each, shared by that position's
  patches), then per patch a copy of the corrupted cache with the layer's component set to
  the clean one and the rest of the prompt fed after it one token at a time (transformers'
  Mamba-1 starts a several-token continuation from a zero state, so stepping is the only exact
  way; tests/test_patching.py's naive loop does the same).

All three give the same numbers: each loop's timed runs are checked against the batched sweep,
to 1e-5 (``tap.run``) and 5e-5 (transformers, whose per-token step path rounds its float32 scan
in another order than statetap's fused one: 1.7e-5 measured at this size).  A loop's warm-up
call is skipped (its first call does nothing): the transformers loop takes minutes a run on
this machine, against which what a warm-up saves (first-call set-up) is nothing.  Each loop's
rounds are interleaved with runs of the batched sweep (``paired``), so
its ``paired_ratio`` compares runs seconds apart under the same machine load; ``ratio`` compares
medians of separate rounds.
"""

from __future__ import annotations

import copy

import pytest
import torch

LENGTH, VOCAB, SITES = 64, 1000, ("ssm", "conv")
CASE = f"transformers Mamba d256 x4, L{LENGTH}, {len(SITES)} sites x 4 layers x {LENGTH} positions"
BATCHED = "statetap cpu"
TAP_LOOP = "naive loop: tap.run per patch"
TRANSFORMERS_LOOP = "transformers: forward per patch, cache edited by hand"


@pytest.fixture(scope="module")
def setting():
    from transformers import MambaConfig, MambaForCausalLM

    import statetap

    torch.manual_seed(0)
    config = MambaConfig(vocab_size=VOCAB, hidden_size=256, num_hidden_layers=4, state_size=16)
    tap = statetap.attach(MambaForCausalLM(config).eval())
    clean = torch.randint(0, VOCAB, (1, LENGTH))
    corrupt = clean.clone()
    corrupt[0, [5, 20]] = (clean[0, [5, 20]] + 1) % VOCAB
    answers = torch.tensor([1]), torch.tensor([2])
    return tap, clean, corrupt, answers


def batched(tap, clean, corrupt, answers) -> torch.Tensor:
    """``[sites, layers, positions]`` patched logit differences."""
    from statetap.interp.patching import activation_patching

    result = activation_patching(tap, clean, corrupt, answers, sites=SITES)
    return torch.stack([result.patched[site][0] for site in SITES])


def tap_loop(tap, clean, corrupt, answers) -> torch.Tensor:
    """The same sweep, one ``tap.run`` of the whole prompt per patch."""
    import statetap
    from statetap.interp.patching import logit_difference

    metric = logit_difference(*answers)
    layers = range(tap.adapter.n_layers)
    emitted = tap.run(clean, emit=[statetap.Emit("state", positions=list(range(LENGTH)))])
    out = torch.empty(len(SITES), len(layers), LENGTH)
    for i, site in enumerate(SITES):
        for layer in layers:
            for t in range(LENGTH):
                value = emitted[site, layer][:, t : t + 1]
                inject = statetap.Inject(site, layer, value, positions=t, mode="set")
                logits = tap.run(corrupt, inject=[inject]).logits[:, -1]
                out[i, layer, t] = metric(logits, torch.tensor([0]))
    return out


def transformers_loop(tap, clean, corrupt, answers) -> torch.Tensor:
    """The same sweep with transformers' own forward: prefixes with ``use_cache=True``, the
    cache edited by hand, the rest stepped one token at a time (module docstring).  statetap's
    adapter only names where the cache keeps each component (no statetap code runs)."""
    from statetap.interp.patching import logit_difference

    model, adapter = tap.model, tap.adapter
    metric = logit_difference(*answers)
    pair = torch.tensor([0])
    out = torch.empty(len(SITES), adapter.n_layers, LENGTH)
    for t in range(LENGTH):
        clean_cache = adapter.output_cache(model(clean[:, : t + 1], use_cache=True))
        prefix = model(corrupt[:, : t + 1], use_cache=True)
        if t == LENGTH - 1:  # nothing after the patch: the corrupted metric
            out[:, :, t] = metric(prefix.logits[:, -1], pair)
            continue
        for i, site in enumerate(SITES):
            for layer in range(adapter.n_layers):
                cache = copy.deepcopy(adapter.output_cache(prefix))
                adapter.write_state(
                    cache, site, layer, adapter.cached_state(clean_cache, site, layer)
                )
                for s in range(t + 1, LENGTH):
                    step = model(corrupt[:, s : s + 1], **adapter.cache_kwargs(cache))
                    cache = adapter.output_cache(step)
                out[i, layer, t] = metric(step.logits[:, -1], pair)
    return out


LOOPS = {TAP_LOOP: tap_loop, TRANSFORMERS_LOOP: transformers_loop}
#: per loop: timed rounds (each after a run of the batched sweep) and the tolerance of its check
ROUNDS = {TAP_LOOP: 2, TRANSFORMERS_LOOP: 1}
TOLERANCE = {TAP_LOOP: 1e-5, TRANSFORMERS_LOOP: 5e-5}


def after_warm_up(run, results: list):
    """A call that does nothing the first time (the warm-up), then runs ``run`` and keeps
    what it returns in ``results``."""
    calls = [0]

    def call():
        calls[0] += 1
        if calls[0] > 1:
            results.append(run())

    return call


@pytest.mark.parametrize("impl", [BATCHED, *LOOPS])
def test_patching_sweep(record, setting, impl):
    from statetap.kernels.examples import rel_error

    tap, clean, corrupt, answers = setting

    def sweep():
        return batched(tap, clean, corrupt, answers)

    if impl == BATCHED:
        record.time("activation patching", CASE, impl, lambda: sweep, 3)
        return
    timed = []
    record.time(
        "activation patching",
        CASE,
        impl,
        lambda: after_warm_up(lambda: LOOPS[impl](tap, clean, corrupt, answers), timed),
        ROUNDS[impl],
        paired=lambda: sweep,
    )
    with torch.no_grad():  # every timed run of the loop gave the batched sweep's numbers
        reference = sweep()
    assert len(timed) == ROUNDS[impl]
    for result in timed:
        assert rel_error(result, reference) <= TOLERANCE[impl]
