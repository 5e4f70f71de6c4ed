"""Activation patching on a random transformers Mamba (d 256, 4 layers, L 64): the full layer x
position sweep of every state component (``ssm`` and ``conv``, 512 patches) as
``statetap.interp.patching`` batches it, against the naive loop of one ``tap.run`` per patch
(the clean state ``set`` at its token by an ``Inject``). Both give the same numbers (checked
here to 1e-5); the naive row's ``ratio`` is the batched sweep's speed-up."""

from __future__ import annotations

import pytest
import torch

LENGTH, VOCAB, SITES = 64, 1000, ("ssm", "conv")
CASE = f"transformers Mamba d256 x4, L{LENGTH}, {len(SITES)} sites x 4 layers x {LENGTH} positions"
IMPLS = ["statetap cpu", "naive loop: tap.run per patch"]


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


def naive(tap, clean, corrupt, answers) -> torch.Tensor:
    """The same sweep, one forward pass per patch."""
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


@pytest.mark.parametrize("impl", IMPLS)
def test_patching_sweep(record, setting, impl):
    tap, clean, corrupt, answers = setting
    sweep = batched if impl == "statetap cpu" else naive
    with torch.no_grad():
        if impl != "statetap cpu":  # the two agree before either is timed
            from statetap.kernels.examples import rel_error

            reference = batched(*setting)
            assert rel_error(naive(*setting), reference) <= 1e-5
    record.time(
        "activation patching",
        CASE,
        impl,
        lambda: lambda: sweep(tap, clean, corrupt, answers),
        3 if impl == "statetap cpu" else 1,
    )
