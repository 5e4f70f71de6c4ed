"""``ssd``: the public op, dispatched by device (see ``reference.py`` for the definitions)."""

from .._backend import dispatching
from .reference import ssd_chunked, ssd_sequential

ssd = dispatching("ssd", {"torch": ssd_chunked})

__all__ = ["ssd", "ssd_chunked", "ssd_sequential"]
