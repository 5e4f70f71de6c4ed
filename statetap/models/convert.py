"""Convert an RWKV checkpoint to a transformers folder of statetap's own layout.

The folder holds ``config.json`` (``model_type`` ``statetap_rwkv5``/``6``/``7``),
``model.safetensors``, ``generation_config.json`` and, for World models, the World tokenizer
(``tokenizer_config.json`` and the vocabulary file), so that after ``import statetap.models``

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)

load it. The folder is built under a temporary name beside the destination and renamed into
place when complete: an interrupted conversion leaves no folder under the destination name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

#: the embedding rows of every RWKV World model (the World vocabulary, padded)
WORLD_VOCAB_SIZE = 65536
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_checkpoint(source: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """The statetap model of ``source``: a BlinkDL ``.pth`` file, or a folder that
    ``AutoModelForCausalLM`` loads into statetap (a converted one, or a foreign port's).

    A folder's pad, bos and eos token ids are the ones its ``config.json`` states (a port's,
    e.g. fla's pad None, bos 1, eos 2); a ``.pth`` has none, and gets the World tokenizer's 0.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for a file that is not a
    BlinkDL checkpoint or a folder that does not load into a statetap model.
    """
    from transformers import AutoModelForCausalLM

    from statetap.models import CAUSAL_LMS, from_blinkdl

    path = Path(source)
    if path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if not isinstance(model, CAUSAL_LMS):
            raise ValueError(
                f"{path} loads as {type(model).__name__}, not as one of statetap's RWKV models "
                f"({', '.join(c.__name__ for c in CAUSAL_LMS)})"
            )
        return model  # a port's pad, bos and eos ids kept (foreign_layouts.keep_special_ids)
    if not path.is_file():
        raise FileNotFoundError(f"source {path} is neither a .pth file nor a folder")
    try:
        return from_blinkdl(path, dtype)
    except (RuntimeError, EOFError, OSError) as error:  # what torch.load raises on non-torch files
        raise ValueError(
            f"{path} is not a torch checkpoint that torch.load can read: {error}"
        ) from error


def convert_checkpoint(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    tokenizer: bool = True,
    vocab_file: str | os.PathLike | None = None,
) -> Path:
    """Write ``source`` (see :func:`load_checkpoint`) as a transformers folder at ``out_dir``.

    Args:
        source: a BlinkDL ``.pth`` (x052, x060, x070) or a loadable folder.
        out_dir: the folder to create; it must not exist yet.
        dtype: the saved parameters' dtype (float32, bfloat16 or float16).
        tokenizer: also save the World tokenizer (the model must have 65536 embedding rows).
        vocab_file: the World vocabulary (default: the installed ``rwkv`` package's).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        FileExistsError: ``out_dir`` exists. ValueError: a bad ``source``, or a tokenizer asked
        for a model whose vocabulary is not the World one. TypeError: a bad ``dtype``.
    """
    from statetap.models.world_tokenizer import world_tokenizer

    if dtype not in DTYPES.values():
        raise TypeError(f"dtype must be one of torch.{', torch.'.join(DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"out_dir {out} exists; remove it or choose a new folder")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the parent folder of out_dir, {out.parent}, does not exist")
    model = load_checkpoint(source, dtype)
    world = None
    if tokenizer:
        if model.config.vocab_size != WORLD_VOCAB_SIZE:
            raise ValueError(
                f"{source} has {model.config.vocab_size} embedding rows, not the World "
                f"vocabulary's {WORLD_VOCAB_SIZE}: convert without the tokenizer and add the "
                "model's own"
            )
        world = world_tokenizer(vocab_file)
    temporary = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        temporary.chmod(0o755)  # mkdtemp's folder is private to its owner
        model.save_pretrained(temporary)
        if world is not None:
            world.save_pretrained(temporary)
        os.replace(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out
