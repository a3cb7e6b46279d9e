"""Signals sent straight to a container's init process through a pidfd.

Docker's kill API goes daemon -> containerd -> runc and slows to seconds per
call when hundreds of containers end at once; a deadline must not wait in that
queue. A pidfd (Linux 5.3+) names one process for good (no PID reuse race), and
signalling it is one system call on the event loop. The process is checked to
be in the container's cgroup before its pidfd is kept; where that cannot be done
(a remote engine, another PID namespace) the caller falls back to Docker's API.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


class PidHandles:
    """pidfds of the containers' init processes, by container id."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def attach(self, container_id: str, pid: int) -> bool:
        """Keep a pidfd for ``pid`` if it is the init process of ``container_id``."""
        if pid <= 0 or container_id in self._fds or not hasattr(os, "pidfd_open"):
            return container_id in self._fds
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False
        try:
            # Checked after opening: the pidfd now pins the process we verify.
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            cgroup = ""
        if container_id not in cgroup:
            os.close(fd)
            return False
        self._fds[container_id] = fd
        return True

    def send(self, container_id: str, name: str) -> bool | None:
        """Signal the container's init: True sent, False it is gone, None no handle (use Docker)."""
        fd = self._fds.get(container_id)
        if fd is None:
            return None
        try:
            signal.pidfd_send_signal(fd, signal.Signals[name])
        except ProcessLookupError:
            return False
        except OSError:
            return None
        return True

    def has(self, container_id: str) -> bool:
        return container_id in self._fds

    def detach(self, container_id: str | None) -> None:
        fd = self._fds.pop(container_id or "", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        for container_id in list(self._fds):
            self.detach(container_id)
