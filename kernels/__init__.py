"""statetap.kernels: instrumented recurrences, one sub-package per op.

Every op follows the state contract of ``docs/semantics.md`` and returns a
:class:`ScanOutput` ``(y, final_state, states)``.  Each public function dispatches on the
device of its inputs (``STATETAP_BACKEND`` forces a backend); ``*_sequential`` /
``*_chunked`` / ``*_reference`` are the pure-torch definitions every backend is tested against.
"""

from ._contract import ScanOutput
from .selective_scan import selective_scan
from .ssd import ssd
from .wkv4 import wkv4
from .wkv5 import wkv5
from .wkv6 import wkv6
from .wkv7 import wkv7

OPS = ("selective_scan", "ssd", "wkv4", "wkv5", "wkv6", "wkv7")

__all__ = ["OPS", "ScanOutput", "selective_scan", "ssd", "wkv4", "wkv5", "wkv6", "wkv7"]
