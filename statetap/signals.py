"""Ending cleanly on ``SIGTERM``, and worker processes that die with their parent.

By default ``SIGTERM`` ends a Python process on the spot: no ``finally`` block runs, so worker
processes are left running and temporary files stay behind. :func:`exit_on_sigterm` turns the
signal into ``SystemExit`` so that the ordinary clean-up paths run (the ``statetap`` command
line runs every command inside it); :func:`die_with_parent` makes a worker process receive
``SIGTERM`` when its parent dies, even by ``SIGKILL``, and clean up the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Iterator

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _raise_exit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Within the block, ``SIGTERM`` raises ``SystemExit(143)`` in the main thread (elsewhere,
    or off the main thread, the block changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent(parent: int) -> None:
    """Worker initialiser: ``SIGTERM`` raises ``SystemExit`` here, and the kernel sends it when
    the parent (pid ``parent``) dies (Linux ``PR_SET_PDEATHSIG``; elsewhere only the first
    part). Exits at once if the parent is already gone."""
    signal.signal(signal.SIGTERM, _raise_exit)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the death signal was armed
        raise SystemExit(128 + signal.SIGTERM)
