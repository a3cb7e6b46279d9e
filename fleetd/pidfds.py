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
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger("fleetd")


class PidHandles:
    """pidfds of the containers' init processes, by container id."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._warned = False  # a failed send is logged once

    def attach(self, container_id: str, pid: int) -> bool:
        """Keep a pidfd for ``pid`` if it is the init process of ``container_id``."""
        if container_id in self._fds:
            return True
        fd = pidfd_in(pid, container_id)
        if fd is None:
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
        except OSError as exc:
            if not self._warned:
                self._warned = True
                # EPERM: the agent runs as another user and the daemon lacks CAP_KILL (see systemd/fleetd.service)
                log.warning("signalling through a pidfd failed (%s): using Docker's API, which is slower", exc)
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


def pidfd_in(pid: int, container_id: str) -> int | None:
    """A pidfd for ``pid`` if that process is in the container's cgroup (checked after opening: no reuse race)."""
    if pid <= 0 or not hasattr(os, "pidfd_open"):
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        inside = container_id in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        inside = False
    if not inside:
        os.close(fd)
        return None
    return fd


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (its threads' ``children`` lists, else a scan of /proc)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        found: list[int] = []
        for task in tasks:
            found += [int(c) for c in (task / "children").read_text().split()]
        return found
    except (OSError, ValueError):
        return children_by_scan(pid)


def children_by_scan(pid: int) -> list[int]:
    """The child processes of ``pid``, by their parent PID in /proc/*/stat (kernels without ``children`` lists)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # after "(comm)", which may hold spaces
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def kill_process_tree(pid: int, container_id: str) -> int:
    """SIGKILL a process of a container and all its descendants (a timed-out exec probe); how many were killed.

    Docker has no API to end an exec. Each process is stopped (SIGSTOP) before its children are listed, so none
    can fork a new one unseen; then all are killed. Only processes in the container's cgroup are touched, each
    through a pidfd, so a PID reused meanwhile is never signalled. Nothing happens where the daemon cannot see
    the container's processes (another PID namespace, a remote engine).
    """
    held: list[int] = []
    frontier = [pid]
    try:
        while frontier:
            process = frontier.pop()
            fd = pidfd_in(process, container_id)
            if fd is None:
                continue
            held.append(fd)
            try:
                signal.pidfd_send_signal(fd, signal.SIGSTOP)
            except OSError:
                continue  # gone already
            frontier += children(process)
        killed = 0
        for fd in held:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed += 1
        return killed
    finally:
        for fd in held:
            os.close(fd)
