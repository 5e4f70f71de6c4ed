"""``wkv5``: the public op, dispatched by device (see ``reference.py`` for the definitions)."""

from .._backend import dispatching
from .reference import wkv5_chunked, wkv5_sequential

wkv5 = dispatching("wkv5", {"torch": wkv5_chunked})

__all__ = ["wkv5", "wkv5_chunked", "wkv5_sequential"]
