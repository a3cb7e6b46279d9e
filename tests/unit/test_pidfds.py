from __future__ import annotations

import subprocess
from pathlib import Path

from fleetd.pidfds import PidHandles


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
