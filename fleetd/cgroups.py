"""A container's memory and CPU use, read from its cgroup (no Docker API call: fast enough for `top`)."""

from __future__ import annotations

from pathlib import Path


def cgroup_paths(root: Path, container_id: str) -> list[tuple[Path, Path, Path, int]]:
    """Where a container's memory use, memory limit and CPU time are, for each cgroup layout Docker makes.

    cgroup v1 and v2, each with the cgroupfs or the systemd cgroup driver. The last item is the CPU
    file's unit: 1 (v1 ``cpuacct.usage``, nanoseconds) or 1000 (v2 ``cpu.stat`` ``usage_usec``).
    """
    scope = f"system.slice/docker-{container_id}.scope"
    return [
        # v1, cgroupfs driver
        (root / "memory/docker" / container_id / "memory.usage_in_bytes",
         root / "memory/docker" / container_id / "memory.limit_in_bytes",
         root / "cpuacct/docker" / container_id / "cpuacct.usage", 1),
        # v1, systemd driver
        (root / "memory" / scope / "memory.usage_in_bytes", root / "memory" / scope / "memory.limit_in_bytes",
         root / "cpuacct" / scope / "cpuacct.usage", 1),
        # v2, systemd driver
        (root / scope / "memory.current", root / scope / "memory.max", root / scope / "cpu.stat", 1000),
        # v2, cgroupfs driver
        (root / "docker" / container_id / "memory.current", root / "docker" / container_id / "memory.max",
         root / "docker" / container_id / "cpu.stat", 1000),
    ]


def cgroup_usage(container_id: str, root: Path = Path("/sys/fs/cgroup")) -> dict[str, int] | None:
    """Memory in use, its limit (0: none) and CPU time in ns, from the first layout that has the container."""
    for memory, limit, cpu, scale in cgroup_paths(root, container_id):
        try:
            used = int(memory.read_text())
            cap = limit.read_text().strip()
            cpu_text = cpu.read_text()
        except (OSError, ValueError):
            continue
        if scale == 1000:  # cgroup v2: "usage_usec N" in cpu.stat
            usec = next((int(line.split()[1]) for line in cpu_text.splitlines() if line.startswith("usage_usec")), 0)
            cpu_ns = usec * 1000
        else:
            cpu_ns = int(cpu_text)
        # v1 writes a huge number for "no limit", v2 writes "max"
        limit_bytes = int(cap) if cap.isdigit() and int(cap) < 1 << 62 else 0
        return {"memory_bytes": used, "memory_limit_bytes": limit_bytes, "cpu_ns": cpu_ns}
    return None
