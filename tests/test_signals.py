"""``statetap.signals``: a ``SIGTERM`` whose exception Python swallows in a finaliser still
ends the process.

The swallowing is made to happen for certain: a ``__del__`` method signals its own process, so
that the handler's exception is raised inside the finaliser, where Python prints and drops it.
Without the redelivery the loop after it runs to its deadline.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time

import pytest

from statetap.signals import Terminated, die_with_parent, exit_on_sigterm

DEADLINE_S = 10.0


class SignalsItselfWhenCollected:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # ordinary bytecode, where the handler runs and raises
            time.sleep(0.001)


def swallow_a_sigterm_then_wait() -> float:
    """Drop an object whose ``__del__`` is hit by SIGTERM, then wait; returns the seconds
    waited (the deadline when the signal was lost)."""
    SignalsItselfWhenCollected()
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE_S:
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_sigterm_swallowed_by_a_finaliser_is_delivered_again(capsys):
    unraisable_hook, handler = sys.unraisablehook, signal.getsignal(signal.SIGTERM)
    start = time.monotonic()
    with pytest.raises(Terminated) as raised, exit_on_sigterm():
        swallow_a_sigterm_then_wait()
    assert raised.value.code == 128 + signal.SIGTERM
    assert time.monotonic() - start < 2.0
    assert "Exception ignored" not in capsys.readouterr().err
    # the block restores what it replaced
    assert sys.unraisablehook is unraisable_hook
    assert signal.getsignal(signal.SIGTERM) is handler


def test_other_unraisable_exceptions_still_reach_the_previous_hook():
    seen = []

    class FailsWhenCollected:
        def __del__(self):
            raise RuntimeError("from a finaliser")

    previous = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with exit_on_sigterm():
            FailsWhenCollected()
    finally:
        sys.unraisablehook = previous
    assert [type(u.exc_value) for u in seen] == [RuntimeError]


def _worker() -> None:
    die_with_parent(os.getppid())
    swallow_a_sigterm_then_wait()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_worker_exits_on_a_sigterm_its_finaliser_swallowed():
    worker = multiprocessing.get_context("spawn").Process(target=_worker)
    start = time.monotonic()
    worker.start()
    worker.join(timeout=60)
    alive = worker.is_alive()
    if alive:
        worker.kill()
        worker.join()
    assert not alive, "the worker ignored the swallowed SIGTERM"
    assert worker.exitcode == 128 + signal.SIGTERM
    assert time.monotonic() - start < 60
