"""``statetap demo`` killed while its zoo models train: no worker lives on, no partial entry.

The demo runs as ``python -m statetap`` (which also checks that the module runs like the
console script) with full recipes, which train for minutes, so the kill always lands while
training runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from statetap.cli import main

MODELS = ("quirky-mamba", "text-rwkv4")


def children(pid: int) -> set[int]:
    """The pids whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # it ended meanwhile
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def staging(cache: Path) -> list[Path]:
    return [p for p in cache.glob(".*.tmp*") if p.is_dir()] if cache.exists() else []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_killed_demo_leaves_no_worker_and_no_partial_cache_entry(tmp_path, kill):
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "statetap", "demo", "--out", str(tmp_path / "demo")]
    environment = dict(os.environ, STATETAP_CACHE=str(cache), PYTHONSAFEPATH="1")
    demo = subprocess.Popen(
        [*command, "--models", *MODELS],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    workers: set[int] = set()
    try:
        # both trainings have started: each built its staging folder under the cache lock
        wait_for(
            lambda: len(staging(cache)) == len(MODELS) or demo.poll() is not None,
            120,
            "the trainings to start",
        )
        assert demo.poll() is None, demo.stderr.read().decode()[-3000:]
        workers = children(demo.pid)
        assert len(workers) >= len(MODELS)
        demo.send_signal(kill)
        demo.wait(timeout=60)
        wait_for(lambda: not any(alive(pid) for pid in workers), 20, "the workers to end")
        wait_for(lambda: not staging(cache), 10, "the staging folders to go")
        entries = [p.name for p in cache.iterdir() if p.is_dir()]
        assert entries == [], f"partial cache entries left: {entries}"
        if kill == signal.SIGTERM:
            assert demo.returncode == 128 + signal.SIGTERM
    finally:
        for pid in (*workers, demo.pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        demo.wait(timeout=10)


def test_python_m_statetap_runs_the_command_line():
    environment = dict(os.environ, PYTHONSAFEPATH="1")
    run = subprocess.run(
        [sys.executable, "-m", "statetap", "check", "--ops", "wkv6", "--length", "5"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert main(["check", "--ops", "wkv6", "--length", "5"]) == 0
    bad = subprocess.run(
        [sys.executable, "-m", "statetap", "no-such-command"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "invalid choice: 'no-such-command'" in bad.stderr
