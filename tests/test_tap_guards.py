"""Paths that used to go wrong without a word now raise or are made right.

A pass recorded by autograd (the fused kernels would drop to the reference), a model in
training mode (transformers' fused training path bypasses statetap), padding transformers'
RWKV-4 runs over, a generation position never reached, an ``Inject.value`` whose leading
dimension could mean rows or positions, and the warning on every fallback to the reference.
"""

from __future__ import annotations

import pytest
import torch
from _greedy import GREEDY
from transformers import MambaConfig, MambaForCausalLM, RwkvConfig, RwkvForCausalLM

import statetap
from statetap.adapters import mamba as mamba_adapter
from statetap.kernels._backend import dispatching
from statetap.kernels.examples import rel_error

VOCAB = 41


def mamba():
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=2)
    return MambaForCausalLM(config).eval()


def rwkv():
    torch.manual_seed(0)
    config = RwkvConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, attention_hidden_size=16
    )
    model = RwkvForCausalLM(config).eval()
    with torch.no_grad():
        for block in model.rwkv.blocks:
            block.attention.time_decay.normal_(0.0, 1.0)
    return model


def ids(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length))


# ---------------------------------------------------------------------------- autograd
def test_a_pass_runs_without_autograd_unless_gradients_are_asked_for(monkeypatch):
    tap = statetap.attach(mamba())
    assert all(p.requires_grad for p in tap.model.parameters())
    seen = []
    scan = mamba_adapter.kernels.selective_scan

    def spy(*args, **kwargs):
        seen.append(torch.is_grad_enabled())
        return scan(*args, **kwargs)

    monkeypatch.setattr(mamba_adapter.kernels, "selective_scan", spy)
    result = tap.run(ids(2, 6), emit=[statetap.Emit("ssm", 0)])
    assert seen == [False, False]  # both layers: the dispatcher may take the fused kernel
    assert not result.logits.requires_grad and not result["ssm", 0].requires_grad
    seen.clear()
    result = tap.run(ids(2, 6), requires_grad=True)
    assert seen == [True, True]
    result.logits.sum().backward()
    assert tap.model.backbone.layers[0].mixer.A_log.grad is not None


def test_every_fallback_to_the_reference_warns_and_says_why():
    reference = lambda x: x * 2  # noqa: E731
    fused = lambda x: pytest.fail("the forward-only kernel ran on a tensor needing a gradient")  # noqa: E731
    op = dispatching("toy", {"torch": reference, "cpu": fused})
    x = torch.randn(3, requires_grad=True)
    for _ in range(2):  # every call, not once per process
        with pytest.warns(
            UserWarning,
            match="toy on cpu runs the pure-torch reference, not its cpu kernel: an input "
            "requires a gradient",
        ):
            op(x)


# ---------------------------------------------------------------------------- training mode
@pytest.mark.parametrize("build", [mamba, rwkv])
def test_a_model_in_training_mode_is_refused(build):
    model = build()
    tap = statetap.attach(model)
    model.train()
    with pytest.raises(ValueError, match="is in training mode.*call model.eval"):
        tap.run(ids(1, 5))
    with pytest.raises(ValueError, match="is in training mode"):
        tap.generate(ids(1, 5), max_new_tokens=2)
    model.eval()
    tap.run(ids(1, 5))


def test_attach_leaves_the_training_flags_as_they_were():
    model = mamba().train()
    statetap.attach(model)
    assert all(module.training for module in model.modules())


# ---------------------------------------------------------------------------- RWKV-4 padding
def test_rwkv_left_padding_is_refused_with_the_way_out():
    tap = statetap.attach(rwkv())
    batch = ids(2, 7)
    left = torch.ones_like(batch)
    left[1, :2] = 0
    with pytest.raises(ValueError, match="ignores attention_mask.*pad on the right"):
        tap.run(batch, attention_mask=left)
    with pytest.raises(ValueError, match="use rows of equal length"):
        tap.run(batch, attention_mask=left.flip(1), keep_state=True)
    with pytest.raises(ValueError, match="use rows of equal length"):
        tap.generate(batch, attention_mask=left, max_new_tokens=2)


@torch.no_grad()
def test_rwkv_right_padding_gives_each_row_what_it_gets_alone():
    tap = statetap.attach(rwkv())
    batch = ids(3, 8)
    mask = torch.ones_like(batch)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    emit = [statetap.Emit("wkv", 1, positions=[0, -1]), statetap.Emit("residual", 0)]
    together = tap.run(batch, attention_mask=mask, emit=emit)
    for row in range(3):
        n = int(mask[row].sum())
        alone = tap.run(batch[row : row + 1, :n], emit=emit)
        assert rel_error(alone.logits[0], together.logits[row, :n]) <= 1e-6
        for key in (("wkv", 1), ("residual", 0)):
            assert rel_error(alone[key][0], together[key][row]) <= 1e-6


# ---------------------------------------------------------------------------- generation
def test_a_generation_position_never_reached_raises():
    tap = statetap.attach(mamba())
    prompt = ids(2, 5)
    # three new tokens: the prompt's 5 and the first two generated ones are fed (7 tokens);
    # token 7, the last generated, is never fed back
    tap.generate(prompt, max_new_tokens=3, emit=[statetap.Emit("ssm", 0, positions=6)], **GREEDY)
    with pytest.raises(ValueError, match=r"names token 7 of row 0, which generation never fed"):
        tap.generate(
            prompt, max_new_tokens=3, emit=[statetap.Emit("ssm", 0, positions=7)], **GREEDY
        )
    steer = statetap.Inject("ssm", 1, torch.randn(32, 4), positions=[2, 9])
    with pytest.raises(ValueError, match=r"Inject\('ssm'\).positions\[0, 1\] names token 9"):
        tap.generate(prompt, max_new_tokens=3, inject=[steer], **GREEDY)
    with pytest.raises(ValueError, match="positions='new'.*at least two new tokens"):
        tap.generate(
            prompt, max_new_tokens=1, emit=[statetap.Emit("ssm", 0, positions="new")], **GREEDY
        )


# ---------------------------------------------------------------------------- Inject.value
@torch.no_grad()
def test_inject_value_has_one_reading():
    tap = statetap.attach(mamba())
    batch, positions = ids(2, 6), [1, 3]  # B == Q == 2: a [2, H] value is ambiguous
    per_row = torch.randn(2, 16)
    with pytest.raises(
        ValueError, match=r"ambiguous \(per row or per position\?\).*value\[:, None\]"
    ):
        tap.run(batch, inject=[statetap.Inject("residual", 0, per_row, positions=positions)])
    with pytest.raises(ValueError, match=r"does not fit the site: expected \[16\]"):
        tap.run(batch, inject=[statetap.Inject("residual", 0, per_row[None, None], positions=1)])
    together = tap.run(
        batch, inject=[statetap.Inject("residual", 0, per_row[:, None], positions=positions)]
    )
    for row in range(2):
        alone = tap.run(
            batch[row : row + 1],
            inject=[statetap.Inject("residual", 0, per_row[row], positions=positions)],
        )
        assert rel_error(alone.logits[0], together.logits[row]) <= 1e-6
    per_position = torch.randn(2, 16)
    slots = tap.run(
        batch, inject=[statetap.Inject("residual", 0, per_position[None], positions=positions)]
    )

    def add(module, args):  # the residual after block 0 is block 1's input
        hidden = args[0].clone()
        hidden[:, 1] += per_position[0]
        hidden[:, 3] += per_position[1]
        return (hidden, *args[1:])

    handle = tap.model.backbone.layers[1].register_forward_pre_hook(add)
    try:
        hooked = tap.model(batch).logits
    finally:
        handle.remove()
    assert rel_error(hooked, slots.logits) <= 1e-6
