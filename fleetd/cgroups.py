"""A container's memory and CPU use, read from its cgroup (no Docker API call: fast enough for `top`, and for
sampling every running agent's peaks, ``fleetd.peaks``)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

# Memory in use, its limit, its high-water mark, CPU time: v1's memory and cpuacct files, v2's.
V1_FILES = ("memory.usage_in_bytes", "memory.limit_in_bytes", "memory.max_usage_in_bytes", "cpuacct.usage")
V2_FILES = ("memory.current", "memory.max", "memory.peak", "cpu.stat")


class Layout(NamedTuple):
    """Where one cgroup layout keeps a container's memory files and its CPU time."""

    memory: Path
    cpu: Path
    v2: bool


def cgroup_layouts(root: Path, container_id: str) -> list[Layout]:
    """The directories of a container's cgroup in each layout Docker makes: cgroup v1 and v2, each with the cgroupfs
    or the systemd cgroup driver. A hybrid host (v1 controllers, and v2's ``unified`` hierarchy holding no
    controller) is read as v1: its unified directory has no memory files."""
    scope = f"system.slice/docker-{container_id}.scope"
    return [
        Layout(root / "memory/docker" / container_id, root / "cpuacct/docker" / container_id, v2=False),
        Layout(root / "memory" / scope, root / "cpuacct" / scope, v2=False),
        Layout(root / scope, root / scope, v2=True),
        Layout(root / "docker" / container_id, root / "docker" / container_id, v2=True),
    ]


def cgroup_usage(container_id: str, root: Path = Path("/sys/fs/cgroup")) -> dict[str, int] | None:
    """Memory in use, its peak, its limit (0: none) and CPU time in ns, from the first layout that has the container.

    The peak is the cgroup's high-water mark since it was made (v1 ``memory.max_usage_in_bytes``, v2
    ``memory.peak``); v2 before Linux 5.19 has no ``memory.peak``, and there it is the memory in use now (whoever
    samples it keeps the highest seen). Both count the page cache, as the usage does.
    """
    for layout in cgroup_layouts(root, container_id):
        used_file, limit_file, peak_file, cpu_file = V2_FILES if layout.v2 else V1_FILES
        try:
            used = int((layout.memory / used_file).read_text())
            cap = (layout.memory / limit_file).read_text().strip()
            cpu_text = (layout.cpu / cpu_file).read_text()
        except (OSError, ValueError):
            continue
        try:
            peak = max(used, int((layout.memory / peak_file).read_text()))
        except (OSError, ValueError):
            peak = used
        if layout.v2:  # "usage_usec N" in cpu.stat
            usec = next((int(line.split()[1]) for line in cpu_text.splitlines() if line.startswith("usage_usec")), 0)
            cpu_ns = usec * 1000
        else:
            cpu_ns = int(cpu_text)
        # v1 writes a huge number for "no limit", v2 writes "max"
        limit_bytes = int(cap) if cap.isdigit() and int(cap) < 1 << 62 else 0
        return {"memory_bytes": used, "memory_peak_bytes": peak, "memory_limit_bytes": limit_bytes,
                "cpu_ns": cpu_ns}
    return None
