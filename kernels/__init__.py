"""statetap.kernels: instrumented recurrences, one sub-package per op.

Every op follows the state contract of ``docs/semantics.md`` and returns a
:class:`ScanOutput` ``(y, final_state, states)``.  Positions may be given as a prebuilt
:class:`Schedule` (checked once, then reused by every call without a device sync) and the
emitted states written into a caller's ``states_out`` buffer; a decode loop binds a step's
per-layer arguments once with :class:`PreparedStep`.  Each public function dispatches on the
device of its inputs (``STATETAP_BACKEND`` forces a backend); ``*_sequential`` /
``*_chunked`` / ``*_reference`` are the pure-torch definitions every backend is tested against.
"""

if __name__ != "statetap.kernels":
    # Python run from the repository root finds this folder as the top-level `kernels`, which
    # is a PyPI package of its own: transformers 5.25 requires it and imports it at start-up.
    raise ImportError(
        f"statetap's kernels folder ({__file__}) was imported as {__name__!r}: the repository "
        f"root is on sys.path, so this folder hides the PyPI package 'kernels' that transformers "
        f"imports. Run python with PYTHONSAFEPATH=1 (as `make test` does) or from another folder; "
        f"statetap's kernels are statetap.kernels"
    )

from ._contract import ScanOutput
from ._prepared_step import PreparedStep
from ._schedule import Schedule
from .delta_rule import delta_rule, delta_rule_step
from .selective_scan import selective_scan, selective_scan_step
from .ssd import ssd, ssd_step
from .wkv4 import wkv4, wkv4_step
from .wkv5 import wkv5
from .wkv6 import wkv6, wkv6_step
from .wkv7 import wkv7, wkv7_step

OPS = ("selective_scan", "ssd", "wkv4", "wkv5", "wkv6", "wkv7", "delta_rule")
#: one-token decode steps, state updated in place (RWKV-5 decodes with wkv6_step)
STEPS = (
    "selective_scan_step",
    "ssd_step",
    "wkv4_step",
    "wkv6_step",
    "wkv7_step",
    "delta_rule_step",
)

__all__ = [
    "OPS",
    "STEPS",
    "PreparedStep",
    "ScanOutput",
    "Schedule",
    "delta_rule",
    "delta_rule_step",
    "selective_scan",
    "selective_scan_step",
    "ssd",
    "ssd_step",
    "wkv4",
    "wkv4_step",
    "wkv5",
    "wkv6",
    "wkv6_step",
    "wkv7",
    "wkv7_step",
]
