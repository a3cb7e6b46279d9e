"""A container's usage from its cgroup files, in each layout Docker makes (v1/v2, cgroupfs/systemd driver).

The layouts are built in a temporary directory; the integration tests read the real one of this machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.cgroups import cgroup_usage

CID = "0123abcd" * 8


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v1(root: Path, memory_dir: Path, cpu_dir: Path, limit: str) -> None:
    write(root / memory_dir / "memory.usage_in_bytes", "1048576\n")
    write(root / memory_dir / "memory.limit_in_bytes", f"{limit}\n")
    write(root / memory_dir / "memory.max_usage_in_bytes", "3145728\n")
    write(root / cpu_dir / "cpuacct.usage", "2500000000\n")


def v2(root: Path, directory: Path, limit: str) -> None:
    write(root / directory / "memory.current", "1048576\n")
    write(root / directory / "memory.max", f"{limit}\n")
    write(root / directory / "memory.peak", "3145728\n")
    write(root / directory / "cpu.stat", "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")


SCOPE = Path(f"system.slice/docker-{CID}.scope")
LAYOUTS = {
    "v1 cgroupfs": lambda root, limit: v1(root, Path("memory/docker") / CID, Path("cpuacct/docker") / CID, limit),
    "v1 systemd": lambda root, limit: v1(root, Path("memory") / SCOPE, Path("cpuacct") / SCOPE, limit),
    "v2 systemd": lambda root, limit: v2(root, SCOPE, limit),
    "v2 cgroupfs": lambda root, limit: v2(root, Path("docker") / CID, limit),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_is_read(tmp_path: Path, layout: str) -> None:
    LAYOUTS[layout](tmp_path, "268435456")
    assert cgroup_usage(CID, tmp_path) == {"memory_bytes": 1 << 20, "memory_peak_bytes": 3 << 20,
                                           "memory_limit_bytes": 256 << 20, "cpu_ns": 2_500_000_000}


@pytest.mark.parametrize(("layout", "unlimited"), [("v1 cgroupfs", "9223372036854771712"), ("v2 cgroupfs", "max")])
def test_no_limit_reads_as_zero(tmp_path: Path, layout: str, unlimited: str) -> None:
    LAYOUTS[layout](tmp_path, unlimited)
    usage = cgroup_usage(CID, tmp_path)
    assert usage is not None and usage["memory_limit_bytes"] == 0


def test_a_container_without_a_cgroup_has_no_usage(tmp_path: Path) -> None:
    LAYOUTS["v2 cgroupfs"](tmp_path, "max")
    assert cgroup_usage("f" * 64, tmp_path) is None


def test_v2_without_memory_peak_reports_the_memory_in_use_as_its_peak(tmp_path: Path) -> None:
    """Linux before 5.19 has no memory.peak: the sampler keeps the highest memory.current it sees instead."""
    LAYOUTS["v2 systemd"](tmp_path, "max")
    (tmp_path / SCOPE / "memory.peak").unlink()
    usage = cgroup_usage(CID, tmp_path)
    assert usage is not None and usage["memory_peak_bytes"] == usage["memory_bytes"] == 1 << 20


def test_a_peak_below_the_usage_read_after_it_is_the_usage(tmp_path: Path) -> None:
    """The files are read one after the other: memory that grew between the two reads is not lost."""
    LAYOUTS["v1 cgroupfs"](tmp_path, "268435456")
    write(tmp_path / "memory/docker" / CID / "memory.max_usage_in_bytes", "4096\n")
    usage = cgroup_usage(CID, tmp_path)
    assert usage is not None and usage["memory_peak_bytes"] == 1 << 20


def test_a_hybrid_host_is_read_from_its_v1_controllers(tmp_path: Path) -> None:
    """cgroup v1 with v2's unified hierarchy beside it (this project's CI machines): the unified directory of the
    container has a cpu.stat but no memory controller, so the v1 files are the ones read."""
    LAYOUTS["v1 cgroupfs"](tmp_path, "268435456")
    write(tmp_path / "unified/docker" / CID / "cpu.stat", "usage_usec 1\n")
    write(tmp_path / "unified/docker" / CID / "cgroup.procs", "")
    usage = cgroup_usage(CID, tmp_path)
    assert usage is not None and (usage["memory_peak_bytes"], usage["cpu_ns"]) == (3 << 20, 2_500_000_000)
