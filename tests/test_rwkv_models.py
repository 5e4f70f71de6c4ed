"""statetap.models' RWKV-5/6/7: padding, dtypes, saved folders and BlinkDL loading.

Padding is checked row by row against each text run alone (the models honour
``attention_mask``: a pad leaves every state untouched); the official numerics are in
``test_rwkv_official.py``.
"""

from __future__ import annotations

import pytest
import torch
from rwkv_blinkdl_cases import SIZES, assert_close, random_checkpoint
from transformers import AutoConfig, AutoModelForCausalLM

from statetap.models import (
    Rwkv5ForCausalLM,
    Rwkv6ForCausalLM,
    Rwkv7ForCausalLM,
    config_from_blinkdl,
    from_blinkdl,
    from_blinkdl_state_dict,
)

VERSIONS = ("x052", "x060", "x070")
CLASSES = {"x052": Rwkv5ForCausalLM, "x060": Rwkv6ForCausalLM, "x070": Rwkv7ForCausalLM}


@pytest.fixture(scope="module", params=VERSIONS)
def version(request):
    return request.param


@pytest.fixture
def model(version, fresh_seed):
    return from_blinkdl_state_dict(random_checkpoint(version, fresh_seed))


def padded_batch(texts: list[torch.Tensor], mask_of) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows laid out by ``mask_of(n, length)`` (a bool ``[length]`` with ``n`` Trues): the
    text's tokens where True, pad id 0 elsewhere."""
    length = max(len(t) for t in texts) + 3
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for row, text in enumerate(texts):
        real = mask_of(len(text), length)
        ids[row, real] = text
        mask[row] = real.long()
    return ids, mask


def left(n: int, length: int) -> torch.Tensor:
    return torch.arange(length) >= length - n


def scattered(n: int, length: int) -> torch.Tensor:
    """Pads before, between and after the real tokens."""
    real = torch.zeros(length, dtype=torch.bool)
    real[torch.randperm(length)[:n]] = True
    return real


@pytest.mark.parametrize("layout", [left, scattered], ids=["left", "scattered"])
@torch.no_grad()
def test_every_row_gets_what_it_gets_alone(model, version, layout):
    """Logits at the real tokens and every cached state after the batch equal the row alone."""
    vocab = SIZES[version]["vocab"]
    texts = [torch.randint(1, vocab, (n,)) for n in (6, 2, 4, 1)]
    ids, mask = padded_batch(texts, layout)
    batched = model(ids, attention_mask=mask, use_cache=True)
    for row, text in enumerate(texts):
        alone = model(text[None], use_cache=True)
        real = mask[row].bool()
        assert_close(batched.logits[row, real], alone.logits[0])
        for site in ("att_shift", "wkv", "ffn_shift"):
            for layer in range(model.config.num_hidden_layers):
                ours = getattr(batched.cache, site)[layer][row]
                assert_close(ours, getattr(alone.cache, site)[layer][0])


@torch.no_grad()
def test_pads_change_no_state_when_continuing(model, version):
    """A continuation whose pads come first, from a cached state, equals the same tokens
    without the pads (the pads neither decay nor write the state, nor advance a shift)."""
    vocab = SIZES[version]["vocab"]
    prefix = torch.randint(1, vocab, (2, 5))
    cache = model(prefix, use_cache=True).cache
    tail = torch.randint(1, vocab, (2, 3))
    padded = torch.cat([torch.zeros(2, 2, dtype=torch.long), tail], 1)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    padded[1, 1] = 7
    got = model(padded, attention_mask=mask, cache=cache.clone(), use_cache=True)
    plain = model(tail, cache=cache.clone(), use_cache=True)
    assert_close(got.logits[0, 2:], plain.logits[0])
    assert_close(got.cache.wkv[-1][0], plain.cache.wkv[-1][0])
    assert (got.logits[1, 2:] - plain.logits[1]).abs().max() > 1e-3  # row 1's token 7 is real


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@torch.no_grad()
def test_half_precision_keeps_float32_states(version, dtype, tmp_path, fresh_seed):
    path = tmp_path / "model.pth"
    torch.save(random_checkpoint(version, fresh_seed), path)
    reference, half = from_blinkdl(path), from_blinkdl(path, dtype=dtype)
    assert next(half.parameters()).dtype == dtype
    ids = torch.randint(0, SIZES[version]["vocab"], (2, 7))
    expected, out = reference(ids, use_cache=True), half(ids, use_cache=True)
    assert out.logits.dtype == dtype
    for site in ("att_shift", "wkv", "ffn_shift"):
        assert getattr(out.cache, site)[0].dtype == torch.float32
    error = (out.logits.float() - expected.logits).norm() / expected.logits.norm()
    assert error < 0.05


@torch.no_grad()
def test_a_saved_folder_loads_with_the_auto_classes(model, version, tmp_path):
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == model.config.model_type
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is CLASSES[version]
    ids = torch.randint(0, SIZES[version]["vocab"], (2, 6))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_sizes_come_from_the_tensors(version, fresh_seed):
    size = SIZES[version]
    config = config_from_blinkdl(random_checkpoint(version, fresh_seed))
    assert type(config).__name__ == CLASSES[version].__name__.replace("ForCausalLM", "Config")
    assert (config.num_hidden_layers, config.num_heads, config.head_size) == (
        size["layers"],
        size["heads"],
        size["head_size"],
    )
    assert (config.vocab_size, config.intermediate_size) == (size["vocab"], size["ffn"])
    if version == "x060":
        assert (config.mix_lora_rank, config.decay_lora_rank) == (
            size["mix_rank"],
            size["decay_rank"],
        )
    if version == "x070":
        ranks = (config.decay_lora_rank, config.a_lora_rank, config.value_lora_rank)
        assert (*ranks, config.gate_lora_rank) == size["ranks"]


def test_bad_checkpoints_are_refused(tmp_path, fresh_seed):
    rwkv4 = {
        "emb.weight": torch.zeros(5, 4),
        "blocks.0.att.key.weight": torch.zeros(4, 4),
        "blocks.0.att.time_first": torch.zeros(4),
        "blocks.0.att.time_decay": torch.zeros(4),
    }
    with pytest.raises(ValueError, match="RWKV-4 loads with transformers"):
        from_blinkdl_state_dict(rwkv4)
    with pytest.raises(ValueError, match="not a BlinkDL RWKV checkpoint"):
        from_blinkdl_state_dict({"weight": torch.zeros(2)})
    broken = random_checkpoint("x060", fresh_seed)
    broken["blocks.1.att.time_maa_w2"] = torch.zeros(5, 2, 14)
    with pytest.raises(ValueError, match=r"wrong shapes \['model.blocks.1.att.time_maa_w2"):
        from_blinkdl_state_dict(broken)
    missing = random_checkpoint("x070", fresh_seed)
    del missing["blocks.2.att.g2"]
    with pytest.raises(ValueError, match=r"missing \['model.blocks.2.att.g2'\]"):
        from_blinkdl_state_dict(missing)
    path = tmp_path / "model.pth"
    torch.save(random_checkpoint("x052", fresh_seed), path)
    with pytest.raises(TypeError, match="dtype must be"):
        from_blinkdl(path, dtype=torch.float64)


def test_bad_input_is_refused_naming_the_argument(model, version):
    ids = torch.randint(0, SIZES[version]["vocab"], (2, 4))
    with pytest.raises(ValueError, match=r"attention_mask must be a \[B=2, L>=4\] tensor"):
        model(ids, attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(ids, inputs_embeds=torch.zeros(2, 4, model.config.hidden_size))
    cache = model(ids[:1], use_cache=True).cache
    with pytest.raises(ValueError, match="cache holds 1 rows but the input has 2"):
        model(ids, cache=cache)
    with pytest.raises(TypeError, match="cache must be an RwkvCache"):
        model(ids, cache=[torch.zeros(2)])
    config_class = type(model.config)
    with pytest.raises(ValueError, match=r"num_heads \* head_size must equal hidden_size"):
        config_class(hidden_size=24, head_size=5)
    with pytest.raises(ValueError, match="head_size must be a positive int"):
        config_class(hidden_size=24, head_size=0)


@torch.no_grad()
def test_beam_search_scores_equal_the_returned_sequences_rescored(model, version):
    """Beam search reorders the cache's rows (``RwkvCache.reorder_cache``): each returned
    sequence's score equals its log-probability recomputed in one pass (length penalty 0)."""
    ids = torch.randint(1, SIZES[version]["vocab"], (2, 5))
    new = 4
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        num_beams=3,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
        length_penalty=0.0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    log_probs = model(out.sequences).logits.float().log_softmax(-1)
    picked = log_probs[:, 4:-1].gather(-1, out.sequences[:, 5:, None])[..., 0]
    torch.testing.assert_close(picked.sum(1), out.sequences_scores, rtol=0, atol=1e-4)
