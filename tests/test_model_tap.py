"""The model layer against the models it instruments (tiny models from configs, fixed seeds).

Each identity compares a statetap pass with what the plain transformers model computes:
logits with nothing requested, residuals against ``output_hidden_states``, states against
the model's own cache, state injection against editing that cache between two tokens (the
paper's procedure), residual and mixer injection against a forward hook.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from _greedy import SCORED
from packaging.version import Version
from transformers import (
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    RwkvConfig,
    RwkvForCausalLM,
)

import statetap
from statetap.kernels.examples import rel_error

VOCAB, LENGTH = 97, 11
TRANSFORMERS = Version(transformers.__version__)


_MAMBA = dict(hidden_size=32, state_size=8, num_hidden_layers=3, expand=2)
# name -> (config class, model class, config arguments); all tiny, three layers
ARCHITECTURES = {
    "mamba": (MambaConfig, MambaForCausalLM, _MAMBA | dict(conv_kernel=4)),
    "falcon_mamba": (FalconMambaConfig, FalconMambaForCausalLM, _MAMBA | dict(conv_kernel=4)),
    "mamba2": (
        Mamba2Config,
        Mamba2ForCausalLM,
        _MAMBA | dict(head_dim=8, num_heads=8, n_groups=2, chunk_size=4),
    ),
    "rwkv": (
        RwkvConfig,
        RwkvForCausalLM,
        dict(
            hidden_size=32,
            num_hidden_layers=3,
            attention_hidden_size=32,
            intermediate_size=64,
            rescale_every=2,
        ),
    ),
}


def _build(name: str):
    torch.manual_seed(1234)
    config_class, model_class, arguments = ARCHITECTURES[name]
    model = model_class(config_class(vocab_size=VOCAB, **arguments)).eval()
    if model_class is not RwkvForCausalLM:
        return model
    with torch.no_grad():  # give the decays and bonuses some spread
        for block in model.rwkv.blocks:
            block.attention.time_decay.normal_(0.0, 1.0)
            block.attention.time_first.normal_(0.0, 1.0)
    return model


MODELS = list(ARCHITECTURES)


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return _build(request.param)


def _ids(batch: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, LENGTH))


def _left_padded(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    ids = _ids(batch)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 has 3 pads on the left
    mask[2, :1] = 0
    return ids, mask


def _padded(model) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch the model runs exactly: left-padded, or right-padded for transformers'
    RWKV-4 (which ignores attention_mask; statetap refuses its left padding)."""
    ids, mask = _left_padded()
    return (ids, mask.flip(1)) if isinstance(model, RwkvForCausalLM) else (ids, mask)


def _close(reference: torch.Tensor, value: torch.Tensor, tol: float = 1e-6) -> None:
    assert reference.shape == value.shape, (reference.shape, value.shape)
    assert rel_error(reference, value) <= tol, rel_error(reference, value)


@torch.no_grad()
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_nothing_requested_reproduces_the_logits(model, padded):
    ids, mask = _padded(model) if padded else (_ids(), None)
    plain = model(ids, attention_mask=mask).logits
    result = statetap.attach(model).run(ids, attention_mask=mask)
    _close(plain, result.logits)


@torch.no_grad()
def test_residual_equals_output_hidden_states(model):
    """Every entry of ``output_hidden_states`` is what ``attach`` read it to be: a layer's
    residual as the ``"residual"`` site emits it, the embeddings, or the final norm's output."""
    ids, mask = _padded(model)
    tap = statetap.attach(model)
    plain = model(ids, attention_mask=mask, output_hidden_states=True)
    result = tap.run(ids, attention_mask=mask, emit=[statetap.Emit("residual", positions="all")])
    layout = tap.adapter.hidden_states_layout
    assert len(layout) == len(plain.hidden_states) and "other" not in layout
    last = result["residual", tap.adapter.n_layers - 1]
    for entry, hidden in zip(layout, plain.hidden_states):
        if entry == "embeddings":
            _close(model.get_input_embeddings()(ids), hidden)
        elif entry == "final norm":
            _close(tap.adapter.final_norm(last), hidden)
        else:
            _close(hidden, result["residual", entry])
            assert tap.adapter.hidden_states_index(entry) == layout.index(entry)


# transformers' layouts of output_hidden_states for three layers
BLOCK_OUTPUTS = (0, 1, 2, "final norm")  # each block's output, then the final norm's
CAPTURED = ("embeddings", 0, 1, "final norm")  # 5.25's Mamba-2 (capture_outputs): no layer 2


def test_attach_reads_each_versions_hidden_states_layout(model):
    tap = statetap.attach(model)
    captured = isinstance(model, Mamba2ForCausalLM) and TRANSFORMERS >= Version("5.25")
    assert tap.adapter.hidden_states_layout == (CAPTURED if captured else BLOCK_OUTPUTS)
    if captured:
        with pytest.raises(
            ValueError,
            match="holds no residual stream after layer 2 .*"
            r"\(embeddings, layer 0, layer 1, final norm\)",
        ):
            tap.adapter.hidden_states_index(2)


@torch.no_grad()
@pytest.mark.parametrize("t", [0, 4, LENGTH - 1])
def test_emitted_state_equals_the_models_cache_after_the_prefix(model, t):
    tap = statetap.attach(model)
    ids = _ids()
    result = tap.run(ids, emit=[statetap.Emit("state", positions=[t, -1])], use_cache=True)
    prefix_cache = _prefix_cache(model, tap, ids[:, : t + 1])
    final_cache = tap.adapter.output_cache(result.output)
    for site in tap.adapter.state_sites:
        for layer in range(tap.adapter.n_layers):
            emitted = result[site, layer]
            assert emitted.dtype == torch.float32
            # float32 states through several layers: rounding differs at the 1e-7 level
            _close(tap.adapter.cached_state(prefix_cache, site, layer).float(), emitted[:, 0], 1e-5)
            _close(tap.adapter.cached_state(final_cache, site, layer).float(), emitted[:, 1], 1e-5)


def _prefix_cache(model, tap, prefix):
    """The model's own cache after ``prefix``.

    transformers' RWKV mis-broadcasts a one-token forward with a state when B > 1 (its
    token shift reads a ``[B, C]`` state against ``[B, 1, C]`` inputs), so one-token prefixes
    run row by row there.
    """
    if isinstance(model, RwkvForCausalLM) and prefix.shape[1] == 1:
        rows = [model(prefix[b : b + 1], use_cache=True).state for b in range(prefix.shape[0])]
        return [torch.cat(parts) for parts in zip(*rows)]
    return tap.adapter.output_cache(model(prefix, use_cache=True))


def _continue_from(model, tap, cache, ids, start):
    """Logits of ``ids[:, start:]`` fed after ``cache``.

    Mamba goes one token at a time (transformers' Mamba-1 ignores the recurrent state when it
    continues with several tokens); RWKV takes the rest in one forward (see _prefix_cache).
    """
    if isinstance(model, RwkvForCausalLM):
        return model(ids[:, start:], state=cache, use_cache=True).logits
    logits = []
    for t in range(start, ids.shape[1]):
        out = model(ids[:, t : t + 1], **tap.adapter.cache_kwargs(cache))
        cache = tap.adapter.output_cache(out)
        logits.append(out.logits)
    return torch.cat(logits, 1)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["add", "set"])
def test_state_injection_equals_editing_the_cache_between_two_tokens(model, mode):
    tap = statetap.attach(model)
    ids = _ids()
    t, layer = 5, 1
    for site in tap.adapter.state_sites:
        shape = tap.site_shape(site)
        value = torch.randn(*shape)
        if site == "wkv" and mode == "set":  # a valid triple: positive denominator, finite max
            value[1] = value[1].abs() + 0.5
        scale = torch.tensor([0.5, -1.0, 2.0]) if mode == "add" else None
        injected = tap.run(
            ids, inject=[statetap.Inject(site, layer, value, positions=t, mode=mode, scale=scale)]
        )
        # The paper's procedure: prefill to t, edit the model's own cache, feed the rest.
        prefix = model(ids[:, : t + 1], use_cache=True)
        cache = tap.adapter.output_cache(prefix)
        state = tap.adapter.cached_state(cache, site, layer)
        edited = (
            value.expand_as(state)
            if mode == "set"
            else state + scale.view(-1, *[1] * len(shape)) * value
        )
        tap.adapter.write_state(cache, site, layer, edited)
        rest = _continue_from(model, tap, cache, ids, t + 1)
        _close(prefix.logits, injected.logits[:, : t + 1])
        _close(rest, injected.logits[:, t + 1 :], 1e-5)
        assert rel_error(model(ids).logits[:, t + 1 :], injected.logits[:, t + 1 :]) > 1e-4


@torch.no_grad()
@pytest.mark.parametrize("site", ["residual", "mixer"])
def test_residual_and_mixer_injection_equal_a_forward_hook(model, site):
    tap = statetap.attach(model)
    ids, layer, t = _ids(), 1, 6
    value = torch.randn(tap.site_shape(site))

    def add_at_t(tensor):
        tensor = tensor.clone()
        tensor[:, t] += 3.0 * value
        return tensor

    if site == "residual":
        handle = tap.adapter.blocks[layer + 1].register_forward_pre_hook(
            lambda module, args: (add_at_t(args[0]), *args[1:])
        )
    else:
        handle = tap.adapter.mixer(layer).register_forward_hook(
            lambda module, args, out: tap.adapter.with_mixer_output(
                out, add_at_t(tap.adapter.mixer_output(out))
            )
        )
    try:
        hooked = model(ids).logits
    finally:
        handle.remove()
    result = tap.run(ids, inject=[statetap.Inject(site, layer, value, positions=t, scale=3.0)])
    _close(hooked, result.logits)
    _close(model(ids).logits[:, :t], result.logits[:, :t])


@torch.no_grad()
def test_negative_positions_count_from_each_rows_last_real_token(model):
    ids, mask = _padded(model)
    tap = statetap.attach(model)
    result = tap.run(
        ids, attention_mask=mask, emit=[statetap.Emit("residual", 0, positions=[0, -1])]
    )
    everything = tap.run(
        ids, attention_mask=mask, emit=[statetap.Emit("residual", 0, positions="all")]
    )
    first_real = mask.argmax(1)
    last_real = mask.shape[1] - 1 - mask.flip(1).argmax(1)
    for row in range(3):
        _close(everything["residual", 0][row, first_real[row]], result["residual", 0][row, 0])
        _close(everything["residual", 0][row, last_real[row]], result["residual", 0][row, 1])


def test_errors_name_what_was_wrong():
    model = _build("mamba")
    tap = statetap.attach(model)
    ids = _ids()
    with pytest.raises(ValueError, match="layer 3 is out of range for a model with 3 layers"):
        tap.run(ids, emit=[statetap.Emit("residual", 3)])
    with pytest.raises(
        ValueError, match="has no site 'wkv'; its sites are residual, mixer, ssm, conv"
    ):
        tap.run(ids, emit=[statetap.Emit("wkv", 0)])
    with pytest.raises(ValueError, match=r"outside row 0, which has 11 real tokens"):
        tap.run(ids, emit=[statetap.Emit("ssm", 0, positions=11)])
    with pytest.raises(ValueError, match=r"does not fit the site: expected \[64, 8\]"):
        tap.run(ids, inject=[statetap.Inject("ssm", 0, torch.zeros(64, 7))])
    with pytest.raises(ValueError, match="positions='all' is for the residual and mixer sites"):
        tap.run(ids, emit=[statetap.Emit("ssm", 0, positions="all")])
    with pytest.raises(
        TypeError, match="no adapter for Linear; supported model classes: .*MambaForCausalLM"
    ):
        statetap.attach(torch.nn.Linear(2, 2))


@torch.no_grad()
@pytest.mark.parametrize("rest", [1, 4], ids=["one-token", "several-tokens"])
def test_resuming_from_a_state_equals_one_pass(model, rest):
    tap = statetap.attach(model)
    batch = 1 if isinstance(model, RwkvForCausalLM) and rest == 1 else 3  # see check_run
    ids = _ids(batch)
    cut = LENGTH - rest
    whole = tap.run(ids, emit=[statetap.Emit("state", positions=[cut - 1, cut])])
    prompt = tap.run(ids[:, :cut], keep_state=True)
    resumed = tap.run(ids[:, cut:], state=prompt.state, emit=[statetap.Emit("state", positions=0)])
    again = tap.run(ids[:, cut:], state=prompt.state)  # the snapshot is left as it was
    _close(whole.logits[:, cut:], resumed.logits, 1e-5)
    assert torch.equal(resumed.logits, again.logits)
    for site in tap.adapter.state_sites:
        for layer in range(tap.adapter.n_layers):
            _close(whole[site, layer][:, 0], prompt.state.get(site, layer), 1e-5)
            _close(whole[site, layer][:, 1], resumed[site, layer][:, 0], 1e-5)


@torch.no_grad()
def test_fork_and_edit_equal_injections_in_one_pass(model):
    """A multiplier sweep from one prompt: fork(3) + edit == Inject with each scale."""
    tap = statetap.attach(model)
    ids, cut, layer = _ids(2), 6, 2
    site = tap.adapter.state_sites[0]
    value = 0.5 * torch.randn(tap.site_shape(site))
    scales = torch.tensor([-1.0, 0.0, 2.0])
    sweep = tap.run(ids[:, :cut], keep_state=True).state.fork(3)
    sweep.edit(site, layer, value, scale=scales.repeat(2))
    branched = tap.run(ids[:, cut:].repeat_interleave(3, 0), state=sweep).logits
    for i, scale in enumerate(scales.tolist()):
        inject = statetap.Inject(site, layer, value, positions=cut - 1, scale=scale)
        single = tap.run(ids, inject=[inject]).logits[:, cut:]
        _close(single, branched[i::3], 1e-5)


def test_state_errors():
    model = _build("rwkv")
    tap = statetap.attach(model)
    state = tap.run(_ids(2), keep_state=True).state
    with pytest.raises(ValueError, match="one-token steps from a state wrong when B > 1"):
        tap.run(_ids(2)[:, :1], state=state)
    with pytest.raises(
        ValueError, match="'residual' is not a state component; this model's are wkv"
    ):
        state.edit("residual", 0, torch.zeros(32))
    with pytest.raises(
        ValueError, match=r"value for 'att_shift' must have shape \[32\] or \[2, 32\]"
    ):
        state.edit("att_shift", 0, torch.zeros(31))
    with pytest.raises(ValueError, match="state has 2 rows but input_ids has 3"):
        tap.run(_ids(3), state=state)
    with pytest.raises(ValueError, match="use rows of equal length"):
        tap.run(
            _ids(2),
            attention_mask=torch.tensor([[1] * LENGTH, [1] * (LENGTH - 1) + [0]]),
            keep_state=True,
        )
    mamba = statetap.attach(_build("mamba"))
    with pytest.raises(ValueError, match="pad on the left"):
        mamba.run(
            _ids(2),
            attention_mask=torch.tensor([[1] * LENGTH, [1] * (LENGTH - 1) + [0]]),
            keep_state=True,
        )


@torch.no_grad()
def test_steered_generate_equals_a_manual_step_by_step_loop(model):
    tap = statetap.attach(model)
    batch = 1 if isinstance(model, RwkvForCausalLM) else 2  # see check_run
    prompt, new = _ids(batch)[:, :6], 4
    site = tap.adapter.state_sites[0]
    state_value = 0.3 * torch.randn(tap.site_shape(site))
    residual_value = torch.randn(tap.site_shape("residual"))
    requests = [
        statetap.Inject(site, 1, state_value, positions=-1, scale=2.0),  # last prompt token
        statetap.Inject("residual", 0, residual_value, positions="new"),  # every fed-back token
    ]
    # No end-of-sequence token: every row generates all `new` tokens whatever it picks.
    # Every prompt token is real (generate would otherwise mask prompt tokens equal to the pad id).
    options = SCORED | dict(max_new_tokens=new, attention_mask=torch.ones_like(prompt))
    generated = tap.generate(
        prompt, inject=requests, emit=[statetap.Emit(site, 2, positions="new")], **options
    )
    # The same by hand: prefill with the prompt injection, then one step per new token.
    step = tap.run(prompt, keep_state=True, inject=requests[:1])
    tokens, emitted = [], []
    for k in range(new):
        tokens.append(step.logits[:, -1].argmax(-1))
        if k == new - 1:
            break
        feed = statetap.Inject("residual", 0, residual_value, positions=0)
        step = tap.run(
            tokens[-1][:, None],
            state=step.state,
            keep_state=True,
            inject=[feed],
            emit=[statetap.Emit(site, 2, positions=0)],
        )
        emitted.append(step[site, 2])
    assert torch.equal(generated.sequences, torch.cat([prompt, torch.stack(tokens, 1)], 1))
    _close(torch.cat(emitted, 1), generated[site, 2], 1e-5)
    plain = model.generate(prompt, **options)
    # The first new token reads the prompt's last output, before any injection acts; every
    # later one is steered.
    _close(plain.scores[0], generated.output.scores[0])
    for k in range(1, new):
        assert rel_error(plain.scores[k], generated.output.scores[k]) > 1e-4


@pytest.mark.gpu
@torch.no_grad()
def test_offload_streams_emissions_to_pinned_cpu_memory():
    model = _build("mamba").cuda()
    tap = statetap.attach(model)
    ids = _ids().cuda()
    emit = [statetap.Emit("state", positions=[2, -1]), statetap.Emit("residual", positions="all")]
    on_device = tap.run(ids, emit=emit)
    offloaded = tap.run(ids, emit=emit, offload=True)
    for key, value in on_device.activations.items():
        host = offloaded[key]
        assert host.device.type == "cpu" and host.is_pinned()
        assert torch.equal(value.cpu(), host)


@torch.no_grad()
def test_generation_with_rows_reaching_a_position_at_different_steps(model):
    """Left-padded prompts of different lengths reach a generated position at different steps,
    so a one-token step sets the state of some rows only; each row equals its own run."""
    if isinstance(model, RwkvForCausalLM):
        pytest.skip("transformers' RWKV ignores attention_mask: padded rows differ anyway")
    tap = statetap.attach(model)
    ids = _ids(2)[:, :6]
    mask = torch.ones_like(ids)
    mask[0, 0] = 0  # row 0: five real tokens, row 1: six
    value = 0.1 * torch.randn(tap.site_shape("ssm"))
    request = statetap.Inject("ssm", 1, value, positions=6, mode="set")  # a generated token
    options = SCORED | dict(max_new_tokens=4)
    both = tap.generate(ids, attention_mask=mask, inject=[request], **options)
    for row in range(2):
        alone = ids[row : row + 1, 1 - row :]  # the row without its padding
        single = tap.generate(
            alone, attention_mask=torch.ones_like(alone), inject=[request], **options
        )
        assert torch.equal(both.sequences[row, -4:], single.sequences[0, -4:])
        for k in range(4):
            _close(single.output.scores[k][0], both.output.scores[k][row], 1e-5)
