"""A child started with ``service_base.lifetime.child_env`` ends when its parent is killed with SIGKILL
(the parent gets no chance to stop it), and ends at once when its parent is already gone."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service_base.lifetime import PARENT_PID_ENV, child_env
from tests.helpers import eventually


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


# The parent: starts a real expert process the way `make run` does, reports its pid once the expert
# serves, then waits to be killed.
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from service_base.lifetime import child_env
    child = subprocess.Popen([sys.executable, "-m", "expert_svc", "--engine", "synthetic", "--name", "orphan",
                              "--listen", "127.0.0.1:0", "--grace-s", "0.5"],
                             env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    for line in child.stderr:
        if "serving" in line:
            break
    print(child.pid, flush=True)
    time.sleep(120)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_kill_9_of_the_parent_ends_the_child() -> None:
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", PARENT, stdout=asyncio.subprocess.PIPE)
    child_pid = 0
    try:
        child_pid = int(await asyncio.wait_for(parent.stdout.readline(), 60))
        assert not gone(child_pid)
        parent.kill()  # SIGKILL: the parent cannot forward anything
        await parent.wait()
        await eventually(lambda: gone(child_pid), what="the child ends after its parent")
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if child_pid and not gone(child_pid):
            os.kill(child_pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_whose_parent_is_already_gone_ends_at_once() -> None:
    # The race: the parent dies between starting the child and the child's prctl. The child sees
    # that the pid it was given is not its parent and ends instead of running on unwatched.
    env = child_env()
    env[PARENT_PID_ENV] = str(os.getpid() + 1_000_000)  # no process has this pid, let alone ours
    script = "from service_base.lifetime import die_with_parent; die_with_parent(); import time; time.sleep(60)"
    result = subprocess.run([sys.executable, "-c", script], env=env, timeout=60, check=False)
    assert result.returncode == -signal.SIGTERM


def test_without_the_variable_nothing_changes() -> None:
    env = {key: value for key, value in os.environ.items() if key != PARENT_PID_ENV}
    script = ("import os; from service_base.lifetime import die_with_parent, PARENT_PID_ENV; "
              "die_with_parent(); print('alive')")
    result = subprocess.run([sys.executable, "-c", script], env=env, timeout=60, check=True,
                            capture_output=True, text=True)
    assert result.stdout.strip() == "alive"


def test_the_variable_is_not_passed_on_to_grandchildren() -> None:
    script = ("import os; from service_base.lifetime import die_with_parent, PARENT_PID_ENV; "
              "die_with_parent(); print(PARENT_PID_ENV in os.environ)")
    result = subprocess.run([sys.executable, "-c", script], env=child_env(), timeout=60, check=True,
                            capture_output=True, text=True)
    assert result.stdout.strip() == "False"
