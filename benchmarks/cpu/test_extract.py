"""The main job on the CPU: ``statetap extract`` of the residual stream and every state
component at every layer (last token of each text), against the plain forward of the same
model on the same batches, measured side by side in one run with pytest-benchmark; and the
peak memory of each, in a fresh process of its own.

Targets: extraction at >= 0.95x the plain forward's tokens/s; peak memory <= 1.1x the plain
forward's plus one shard.  Run (not part of the test suite)::

    .venv/bin/python -m pytest -p no:xdist benchmarks/cpu/test_extract.py \\
        --benchmark-json benchmarks/results/<date>-cpu-extract.json

A third row, ``tap.run`` over the same batches with the same emissions, separates the cost of
the instrumented passes from that of the job around them (tokenising, attaching, writing).
Each test's ``extra_info`` holds tokens/s; the extraction's also its ratios to both; the
memory test's the peak RSS of both processes, the largest shard and the ratios.  Run as a
script (``python test_extract.py KIND forward|extract OUT``) it is one process of the memory
test.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile

import pytest
import torch

TEXTS = 48  # paragraphs of the Python docs (statetap.defaults.default_texts)
SETTINGS = dict(sites=["residual", "state"], positions=[-1], batch_size=16, max_length=128)
SHARD_ROWS = 24
KINDS = ["mamba", "rwkv"]


def build(kind: str):
    """A seeded 4-layer, 128-wide Mamba or RWKV-4 with a byte-level tokenizer."""
    from transformers import (
        ByT5Tokenizer,
        MambaConfig,
        MambaForCausalLM,
        RwkvConfig,
        RwkvForCausalLM,
    )

    tokenizer = ByT5Tokenizer()
    torch.manual_seed(0)
    vocab = len(tokenizer)
    if kind == "mamba":
        config = MambaConfig(vocab_size=vocab, hidden_size=128, num_hidden_layers=4, state_size=16)
        return MambaForCausalLM(config).eval(), tokenizer
    config = RwkvConfig(
        vocab_size=vocab,
        hidden_size=128,
        num_hidden_layers=4,
        attention_hidden_size=128,
        intermediate_size=256,
    )
    return RwkvForCausalLM(config).eval(), tokenizer


def texts() -> list[str]:
    from statetap.defaults import default_texts

    return default_texts(TEXTS)


def same_batches(tokenizer, texts: list[str]) -> list:
    """The extraction's own passes: windows of SHARD_ROWS texts, length-sorted, batched."""
    from statetap.extract.batching import batches, pad_id, tokenize

    passes = []
    for start in range(0, len(texts), SHARD_ROWS):
        window = texts[start : start + SHARD_ROWS]
        rows = range(start, start + len(window))
        tokens = tokenize(tokenizer, rows, window, SETTINGS["max_length"])
        padding = pad_id(tokenizer)
        passes += batches(tokens, SETTINGS["batch_size"], None, padding, torch.device("cpu"))
    return passes


def plain_forward(model, passes: list) -> None:
    """The model's own forward (with its logits) over the passes, under no_grad."""
    with torch.no_grad():
        for batch in passes:
            model(batch.input_ids, attention_mask=batch.attention_mask)


def instrumented_forward(tap, passes: list) -> None:
    """What the extraction's passes do, without the job around them (tokenising, attaching,
    assembling and writing shards): ``tap.run`` with the same emissions, stopping after the
    last layer."""
    import statetap

    emit = [statetap.Emit(site, "all", SETTINGS["positions"]) for site in SETTINGS["sites"]]
    last = tap.adapter.n_layers - 1
    for batch in passes:
        tap.run(batch.input_ids, batch.attention_mask, emit=emit, offload=True, stop_after=last)


def extraction(model, tokenizer, texts: list[str], out):
    from statetap.extract import ExtractConfig, extract

    config = ExtractConfig(out=out, shard_rows=SHARD_ROWS, progress=False, **SETTINGS)
    return extract(model, tokenizer, texts, config, "benchmark")


measured: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", params=KINDS)
def job(request):
    model, tokenizer = build(request.param)
    corpus = texts()
    passes = same_batches(tokenizer, corpus)
    tokens = int(sum(batch.lengths.sum() for batch in passes))
    return request.param, model, tokenizer, corpus, passes, tokens


def test_plain_forward(benchmark, job):
    kind, model, _, _, passes, tokens = job
    benchmark.group = f"extract-{kind}"
    benchmark.pedantic(plain_forward, (model, passes), rounds=3, warmup_rounds=1)
    measured[kind, "forward"] = tokens / benchmark.stats.stats.mean
    benchmark.extra_info.update(tokens=tokens, tokens_per_second=measured[kind, "forward"])


def test_instrumented_forward(benchmark, job):
    kind, model, _, _, passes, tokens = job
    import statetap

    tap = statetap.attach(model)
    benchmark.group = f"extract-{kind}"
    benchmark.pedantic(instrumented_forward, (tap, passes), rounds=3, warmup_rounds=1)
    rate = tokens / benchmark.stats.stats.mean
    measured[kind, "tap.run"] = rate
    benchmark.extra_info.update(tokens=tokens, tokens_per_second=rate)


def test_extract_every_state_at_every_layer(benchmark, job, tmp_path):
    kind, model, tokenizer, corpus, _, tokens = job
    benchmark.group = f"extract-{kind}"
    folders = iter(range(1000))

    def run():
        return extraction(model, tokenizer, corpus, tmp_path / str(next(folders)))

    manifest = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert manifest.tokens == tokens  # the same tokens as the forward's batches
    rate = tokens / benchmark.stats.stats.mean
    benchmark.extra_info.update(tokens=tokens, tokens_per_second=rate)
    for baseline in ("forward", "tap.run"):
        if (kind, baseline) in measured:
            ratio = rate / measured[kind, baseline]
            benchmark.extra_info[f"ratio_to_{baseline}"] = ratio
            print(f"\n{kind}: extract {rate:.0f} tok/s = {ratio:.3f}x the {baseline} passes")


def peak_of(kind: str, variant: str) -> dict:
    """Peak RSS (bytes) of one fresh process running ``variant``, and its largest shard."""
    with tempfile.TemporaryDirectory() as out:
        run = subprocess.run(
            [sys.executable, __file__, kind, variant, out],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", KINDS)
def test_peak_memory(benchmark, kind):
    benchmark.group = f"memory-{kind}"
    result = benchmark.pedantic(
        lambda: {variant: peak_of(kind, variant) for variant in ("forward", "extract")}, rounds=1
    )
    forward, extract = result["forward"]["peak"], result["extract"]["peak"]
    shard = result["extract"]["shard"]
    target = 1.1 * forward + shard
    benchmark.extra_info.update(
        forward_peak_bytes=forward,
        extract_peak_bytes=extract,
        largest_shard_bytes=shard,
        extract_over_forward=extract / forward,
        extract_over_target=extract / target,
    )
    print(
        f"\n{kind}: peak RSS forward {forward / 2**20:.1f} MiB, extract {extract / 2**20:.1f} "
        f"MiB, largest shard {shard / 2**20:.2f} MiB: {extract / target:.3f} of the target"
    )


def _memory_process(kind: str, variant: str, out: str) -> None:
    model, tokenizer = build(kind)
    corpus = texts()
    if variant == "forward":
        plain_forward(model, same_batches(tokenizer, corpus))
    else:
        extraction(model, tokenizer, corpus, out)
    shards = [p.stat().st_size for p in pathlib.Path(out).glob("shard-*.safetensors")]
    # VmHWM: this process's own high-water mark (ru_maxrss would keep the forking parent's)
    status = pathlib.Path("/proc/self/status").read_text().splitlines()
    peak = int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024
    print(json.dumps(dict(peak=peak, shard=max(shards, default=0))))


if __name__ == "__main__":
    _memory_process(*sys.argv[1:])
