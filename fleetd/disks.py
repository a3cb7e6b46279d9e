"""The loop-device adapter: each agent's writable space is a filesystem of a fixed size.

overlay2 on ext4 cannot bound a container's writable layer (``--storage-opt size`` needs xfs
with pquota), and Docker's local volume driver has no size either (its ``size`` option needs
the same project quotas). So the agent's root filesystem is read-only, and what it may write
(/tmp, /fleetd/checkpoint) lives on ext4 filesystems of a fixed size, each in an image file
under ``STATE_DIR/disks``, attached to a loop device. The kernel answers ENOSPC at the size.

The daemon makes the filesystem (mke2fs on a regular file: no privilege) and attaches it
(losetup: write access to /dev/loop-control and /dev/loopN, no capability); dockerd mounts it
through a local volume (``type=ext4``, ``device=`` the link below), as it mounts any volume.
The link ``AGENT-WHICH.dev`` names the loop device: the volume keeps pointing at the right
one after a host reboot, when the image is attached again to whatever device is free.

Images are sparse: the host's disk holds what agents wrote, up to their size, no more.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
import subprocess
from pathlib import Path

from fleetd.errors import RuntimeFailure

MKE2FS = ("-q", "-F", "-t", "ext4", "-m", "0")  # no blocks reserved for root: the agent gets all of it
# The ext4 root starts empty (no lost+found), so that Docker copies the image's directory into the
# volume on first use, with its owner and mode, as it does for a named volume.
EMPTY_ROOT = ("-w", "-R", "rmdir lost+found")
# <linux/loop.h>: the status of a loop device (struct loop_info64 begins with lo_device and lo_inode: the backing
# file's st_dev and st_ino), and the detach.
LOOP_CLR_FD = 0x4C01
LOOP_GET_STATUS64 = 0x4C05
LOOP_INFO64_SIZE = 232


class Disks:
    """Image files, their loop devices and the links the volumes mount, for one instance's agents."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def image(self, agent_id: str, which: str) -> Path:
        return self.root / f"{agent_id}-{which}.img"

    def device(self, agent_id: str, which: str) -> Path:
        """The path a volume mounts: a link to the image's loop device."""
        return self.root / f"{agent_id}-{which}.dev"

    def create(self, agent_id: str, which: str, size: int) -> Path:
        """A new empty ext4 filesystem of ``size`` bytes, attached; return the device path to mount."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        image = self.image(agent_id, which)
        with open(image, "xb") as handle:
            handle.truncate(size)
        _run("mke2fs", *MKE2FS, str(image))
        _run("debugfs", *EMPTY_ROOT, str(image))
        return self.attach(agent_id, which)

    def attach(self, agent_id: str, which: str) -> Path:
        """Make sure the image has a loop device and the link names it (after a host reboot it had none)."""
        image = self.image(agent_id, which)
        # --nooverlap: the device the image already has, if any, else a free one.
        loop = _run("losetup", "--find", "--show", "--nooverlap", str(image)).strip()
        link = self.device(agent_id, which)
        staged = link.with_suffix(".new")
        staged.unlink(missing_ok=True)
        staged.symlink_to(loop)
        staged.replace(link)
        return link

    def agents(self) -> set[str]:
        """The agents that have disks."""
        return {p.name.rsplit("-", 1)[0] for p in self.root.glob("*.img")} if self.root.is_dir() else set()

    def exists(self, agent_id: str) -> list[str]:
        """Which disks this agent has (none for an agent spawned before disks existed)."""
        return sorted(p.name.removeprefix(f"{agent_id}-").removesuffix(".img")
                      for p in self.root.glob(f"{agent_id}-*.img"))

    def remove(self, agent_id: str) -> None:
        """Detach and delete the agent's disks (once their volumes are gone)."""
        for which in self.exists(agent_id):
            self._remove(self.image(agent_id, which))

    def remove_all(self) -> int:
        """Detach and delete every disk of the instance; return how many."""
        images = sorted(self.root.glob("*.img")) if self.root.is_dir() else []
        for image in images:
            self._remove(image)
        return len(images)

    def _remove(self, image: Path) -> None:
        # check=False: another removal of the same agent (its destroy event, the janitor) may have been first.
        for loop in _run("losetup", "--noheadings", "--output", "NAME", "--associated", str(image),
                         check=False).split():
            detach(loop, image)
        image.with_suffix(".dev").unlink(missing_ok=True)
        image.unlink(missing_ok=True)


def detach(loop: str, image: Path) -> bool:
    """Detach ``loop`` if it is still backed by ``image``; return whether it was.

    By name alone (``losetup --detach``) this raced: the device listed for one agent's image could be freed (its
    volume unmounted) and given to another agent's spawn before the detach, which then took the other agent's
    disk away (its mount failed with EIO). Holding the device open pins it: it cannot be freed and attached to
    another file while we look at its backing file and detach it. A device still mounted is only marked to go
    when it is unmounted (the kernel's autoclear).
    """
    try:
        fd = os.open(loop, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False  # gone already
    try:
        status = bytearray(LOOP_INFO64_SIZE)
        try:
            fcntl.ioctl(fd, LOOP_GET_STATUS64, status)
        except OSError:
            return False  # not attached to anything now
        device, inode = struct.unpack_from("=QQ", status)
        try:
            backing = os.stat(image)
        except FileNotFoundError:
            return False
        if (device, inode) != (backing.st_dev, backing.st_ino):
            return False  # another file's device now
        with contextlib.suppress(OSError):  # ENXIO: another removal detached it first
            fcntl.ioctl(fd, LOOP_CLR_FD)
        return True
    finally:
        os.close(fd)


def _run(tool: str, *args: str, check: bool = True) -> str:
    binary = shutil.which(tool) or os.path.join("/usr/sbin", tool)
    try:
        result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeFailure(f"{tool}: {exc}") from None
    if check and result.returncode != 0:
        raise RuntimeFailure(f"{tool} {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout
