"""Ending cleanly on ``SIGTERM``, and worker processes that die with their parent.

By default ``SIGTERM`` ends a Python process on the spot: no ``finally`` block runs, so worker
processes are left running and temporary files stay behind. :func:`exit_on_sigterm` turns the
signal into :class:`Terminated` (a ``SystemExit``) so that the ordinary clean-up paths run (the
``statetap`` command line runs every command inside it); :func:`die_with_parent` makes a worker
process receive ``SIGTERM`` when its parent dies, even by ``SIGKILL``, and clean up the same way.

A signal handler's exception is raised after whatever bytecode the main thread is running,
which may be a ``__del__`` method or another finaliser: Python prints such an exception
("Exception ignored in ...") and goes on, so the process would carry on as if never signalled
(seen in a zoo training: a ``regex`` object's ``__del__`` swallowed it and the training ran to
its end). While a handler of this module is installed, a :class:`Terminated` that Python
swallows this way is delivered again a moment later, until it lands in ordinary code.
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
REDELIVERY_DELAY_S = 0.05  # after the swallowing finaliser has returned


class Terminated(SystemExit):
    """``SystemExit(128 + signum)`` raised in the main thread by the handlers of this module."""

    @property
    def signum(self) -> int:
        return self.code - 128


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(128 + signum)


def _redeliver_swallowed(previous: object):
    """An ``sys.unraisablehook`` that sends the signal of a swallowed :class:`Terminated` to
    this process again after :data:`REDELIVERY_DELAY_S` (from a timer thread, so that the
    handler does not run inside the finaliser again) and hands every other unraisable exception
    to ``previous``."""

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, Terminated):
            resend = threading.Timer(
                REDELIVERY_DELAY_S, os.kill, (os.getpid(), unraisable.exc_value.signum)
            )
            resend.daemon = True
            resend.start()
        else:
            previous(unraisable)

    return hook


def _install() -> tuple[object, object]:
    """Set this module's ``SIGTERM`` handler and, with it, the hook that redelivers a swallowed
    :class:`Terminated`; returns the previous ``(handler, unraisable hook)``."""
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _redeliver_swallowed(previous_hook)
    return signal.signal(signal.SIGTERM, _raise_terminated), previous_hook


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Within the block, ``SIGTERM`` raises :class:`Terminated` (exit status 143) in the main
    thread, again if a finaliser swallows it (elsewhere, or off the main thread, the block
    changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous, previous_hook = _install()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_hook


def die_with_parent(parent: int) -> None:
    """Worker initialiser: ``SIGTERM`` raises :class:`Terminated` here (again if a finaliser
    swallows it), and the kernel sends it when the parent (pid ``parent``) dies (Linux
    ``PR_SET_PDEATHSIG``; elsewhere only the first part). Exits at once if the parent is
    already gone."""
    _install()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the death signal was armed
        raise Terminated(128 + signal.SIGTERM)
