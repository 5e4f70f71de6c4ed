"""``selective_scan``: the public op, dispatched by device (``reference.py`` defines it)."""

from .._backend import dispatching
from .reference import selective_scan as selective_scan_reference

selective_scan = dispatching("selective_scan", {"torch": selective_scan_reference})

__all__ = ["selective_scan", "selective_scan_reference"]
