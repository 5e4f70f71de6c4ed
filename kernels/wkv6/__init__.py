"""``wkv6``: the public op, dispatched by device (see ``reference.py`` for the definitions)."""

from .._backend import dispatching
from .reference import wkv6_chunked, wkv6_sequential

wkv6 = dispatching("wkv6", {"torch": wkv6_chunked})

__all__ = ["wkv6", "wkv6_chunked", "wkv6_sequential"]
