"""``wkv7``: the public op, dispatched by device (see ``reference.py`` for the definitions)."""

from .._backend import dispatching
from .reference import wkv7_chunked, wkv7_sequential

wkv7 = dispatching("wkv7", {"torch": wkv7_chunked})

__all__ = ["wkv7", "wkv7_chunked", "wkv7_sequential"]
