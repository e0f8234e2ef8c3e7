"""Child processes that end when the process that started them dies, however it dies (even SIGKILL).

Linux's ``prctl(PR_SET_PDEATHSIG)`` asks the kernel to signal a process when its parent dies. It
must be set in the child. Setting it between fork and exec (``preexec_fn``) is unsafe once the
parent has threads (the metrics server, gRPC's own): the child is a copy of one thread of a
multithreaded process, and loading ``ctypes`` there may take a lock another thread held at the
fork. So the child sets it itself, first thing at start-up, while it is still single-threaded: the
parent puts its pid in ``PARENT_PID_ENV`` (``child_env``), and the child's entry point calls
``die_with_parent``. The parent may die between the fork and that call, in which case no signal
would ever come; the child then finds it has a different parent already and ends at once.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

__all__ = ["PARENT_PID_ENV", "child_env", "die_with_parent"]

PARENT_PID_ENV = "EXPERT_ROUTER_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that should die with this process (``base``: default os.environ)."""
    return {**(os.environ if base is None else base), PARENT_PID_ENV: str(os.getpid())}


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Called first by a child's entry point: ``signum`` comes when the parent that started it dies.

    Does nothing unless the parent set ``PARENT_PID_ENV``; the variable is removed so that this
    process's own children are not mistaken for children of its parent.
    """
    expected = os.environ.pop(PARENT_PID_ENV, None)
    if expected is None or not expected.isdigit() or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(expected):
        # The parent died before prctl took effect: nothing will signal us, so end now.
        os.kill(os.getpid(), signum)
