"""The main job: extract residuals and recurrent states of a model over a corpus, to disk.

Texts come from a list, a text file or a dataset (:mod:`~statetap.extract.inputs`, streamed),
are sorted by length inside windows of ``shard_rows`` and batched under a row count and a token
budget (:mod:`~statetap.extract.batching`), run through one instrumented pass each that stops
after the last requested layer (:mod:`~statetap.extract.forward`), and land in one
safetensors shard per window, in input order (:mod:`~statetap.extract.shards`), described by
``manifest.json`` (:mod:`~statetap.extract.manifest`).  The same call on the same folder
resumes; under ``torchrun`` the ranks share the windows (:mod:`~statetap.extract.run`).
:func:`open_extraction` reads the result back lazily (:mod:`~statetap.extract.reader`).

Example:
    >>> import tempfile, torch, statetap.extract as ex
    >>> from transformers import ByT5Tokenizer, MambaConfig, MambaForCausalLM
    >>> tokenizer = ByT5Tokenizer()
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=len(tokenizer), hidden_size=16,
    ...                                      num_hidden_layers=2, state_size=4)).eval()
    >>> out = tempfile.mkdtemp()
    >>> manifest = ex.extract(model, tokenizer, ["a text", "another text"],
    ...                       ex.ExtractConfig(out=out, positions="0:64", progress=False), "tiny")
    >>> rows = ex.open_extraction(out)
    >>> len(rows), rows[1]["residual.1"].shape, rows[1]["ssm.0"].shape
    (2, torch.Size([12, 16]), torch.Size([12, 32, 4]))
"""

from statetap._lazy import lazy_names

# loaded on first use: the command line checks an ExtractConfig before torch loads
lazy_names(
    __name__,
    {
        "write_atomically": "statetap.extract.atomic",
        "write_json_atomically": "statetap.extract.atomic",
        "DTYPES": "statetap.extract.config",
        "ExtractConfig": "statetap.extract.config",
        "Span": "statetap.extract.config",
        "TextSource": "statetap.extract.inputs",
        "dataset_source": "statetap.extract.inputs",
        "text_file_source": "statetap.extract.inputs",
        "texts_source": "statetap.extract.inputs",
        "MANIFEST": "statetap.extract.manifest",
        "Manifest": "statetap.extract.manifest",
        "manifest_table": "statetap.extract.manifest",
        "read_manifest": "statetap.extract.manifest",
        "Extraction": "statetap.extract.reader",
        "load_extraction": "statetap.extract.reader",
        "open_extraction": "statetap.extract.reader",
        "extract": "statetap.extract.run",
    },
)

__all__ = [
    "DTYPES",
    "MANIFEST",
    "ExtractConfig",
    "Extraction",
    "Manifest",
    "Span",
    "TextSource",
    "dataset_source",
    "extract",
    "load_extraction",
    "manifest_table",
    "open_extraction",
    "read_manifest",
    "text_file_source",
    "texts_source",
    "write_atomically",
    "write_json_atomically",
]
