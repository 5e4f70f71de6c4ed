"""``wkv4``: the public op, dispatched by device (see ``reference.py`` for the definition)."""

from .._backend import dispatching
from .reference import wkv4 as wkv4_reference

wkv4 = dispatching("wkv4", {"torch": wkv4_reference})

__all__ = ["wkv4", "wkv4_reference"]
