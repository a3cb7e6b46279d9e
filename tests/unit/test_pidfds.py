from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from fleetd.pidfds import PidHandles, children, children_by_scan, kill_process_tree


def test_signal_through_pidfd_only_for_a_process_in_the_named_cgroup() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        handles = PidHandles()
        assert not handles.attach("0123456789ab-not-its-cgroup", child.pid)
        assert handles.send("0123456789ab-not-its-cgroup", "SIGTERM") is None  # no handle: use Docker
        # Any substring of the process's own cgroup path stands in for a container id here.
        cgroup = Path(f"/proc/{child.pid}/cgroup").read_text().strip().splitlines()[0]
        assert handles.attach(cgroup, child.pid)
        assert handles.send(cgroup, "SIGTERM") is True
        assert child.wait(10) == -15
        assert handles.send(cgroup, "SIGTERM") is False  # gone
        handles.detach(cgroup)
        assert not handles.has(cgroup)
    finally:
        child.kill()
        child.wait()

def own_cgroup() -> str:
    """The first line of this process's cgroup file, which its children share: it stands in for a container id."""
    return Path("/proc/self/cgroup").read_text().strip().splitlines()[0]


def tree() -> tuple[subprocess.Popen[bytes], list[int]]:
    shell = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 301 & wait"])
    for _ in range(100):
        kids = children(shell.pid)
        if len(kids) == 2:
            return shell, kids
        time.sleep(0.02)
    shell.kill()
    raise AssertionError("the shell did not start its two sleeps")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_whole_tree_is_killed() -> None:
    shell, sleeps = tree()
    assert sorted(children_by_scan(shell.pid)) == sorted(sleeps)  # the fallback finds what the kernel lists
    assert kill_process_tree(shell.pid, own_cgroup()) == 3
    assert shell.wait(5) == -9
    deadline = time.monotonic() + 5
    while any(alive(p) for p in sleeps) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(alive(p) for p in sleeps)


def test_processes_outside_the_container_are_not_touched() -> None:
    shell, sleeps = tree()
    try:
        assert kill_process_tree(shell.pid, "not-this-container-0123456789abcdef") == 0
        assert shell.poll() is None and all(alive(p) for p in sleeps)
        assert kill_process_tree(0, own_cgroup()) == kill_process_tree(-1, own_cgroup()) == 0
    finally:
        for pid in [*sleeps, shell.pid]:
            os.kill(pid, 9)
        shell.wait(5)
