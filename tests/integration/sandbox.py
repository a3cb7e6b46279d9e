"""The sandbox of systemd/fleetd.service, applied without systemd (it is not PID 1 on these machines).

Read from the unit file itself, so that a change to the unit is what the test runs under:
- ``CapabilityBoundingSet=``: ``setpriv --bounding-set`` (root's permitted and effective sets after exec are
  the bounding set), ``NoNewPrivileges=``: ``setpriv --no-new-privs``;
- ``ProtectSystem=strict`` (``full``, ``yes``), ``ReadWritePaths=``, ``ProtectHome=``, ``ProtectControlGroups=``:
  a private mount namespace (``unshare --mount``) in which every mount is made read-only but the API
  filesystems (/proc, /sys, /dev), the read-write paths, and the directories the unit gives the daemon
  (StateDirectory, RuntimeDirectory: here the test's state dir and socket dir); /home, /root and /run/user
  covered with empty tmpfs; the cgroup tree read-only.

One difference, forced by this machine: the Python that runs the daemon lives under /root (pyenv). It is bound
back read-only over the empty /root, which is therefore traversable (0755, not 000). A production install must
not live under /root or /home (README).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "fleetd.service"
API_FILESYSTEMS = ("/proc", "/sys", "/dev")
HOME_PATHS = ("/home", "/root", "/run/user")
# Mounts the daemon never touches and that are many (every container's rootfs and namespace): left as they are.
SKIPPED_MOUNTS = ("/var/lib/docker/", "/run/docker/", "/run/netns/")


@dataclass(frozen=True)
class Sandbox:
    capabilities: tuple[str, ...]
    no_new_privileges: bool
    protect_system: str
    read_write_paths: tuple[str, ...]
    protect_home: str
    protect_control_groups: bool


def service_settings(text: str) -> dict[str, list[str]]:
    """The [Service] section's keys and their values (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def read_unit(path: Path = UNIT) -> Sandbox:
    settings = service_settings(path.read_text())

    def last(key: str, default: str) -> str:
        return settings.get(key, [default])[-1]

    return Sandbox(
        capabilities=tuple(c.lower().removeprefix("cap_") for v in settings.get("CapabilityBoundingSet", [])
                           for c in v.split()),
        no_new_privileges=last("NoNewPrivileges", "no") in ("yes", "true", "1"),
        protect_system=last("ProtectSystem", "no"),
        read_write_paths=tuple(p for v in settings.get("ReadWritePaths", []) for p in v.split()),
        protect_home=last("ProtectHome", "no"),
        protect_control_groups=last("ProtectControlGroups", "no") in ("yes", "true", "1"),
    )


def mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if not point.startswith(SKIPPED_MOUNTS):
            points.append(point)
    return points


def under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def read_only(point: str) -> str:
    """Make a mount read-only in this namespace; "/" must be, an odd mount elsewhere may refuse (said on stderr)."""
    command = f"mount -o remount,bind,ro {shlex.quote(point)}"
    return command if point == "/" else f"{command} || echo 'sandbox: {point} stays writable' >&2"


def script(sandbox: Sandbox, command: list[str], writable: list[Path]) -> str:
    """The shell script that sets the sandbox up in a fresh mount namespace, then execs ``command`` in it."""
    lines = ["set -e", "mount --make-rprivate /"]
    rw = [p for p in sandbox.read_write_paths] + [str(p) for p in writable]
    for path in rw:
        optional = path.startswith("-")
        path = path.lstrip("-")
        if optional and not Path(path).exists():
            continue
        lines.append(f"mount --bind {shlex.quote(path)} {shlex.quote(path)}")
    points = mount_points()
    if sandbox.protect_home in ("yes", "read-only", "tmpfs"):
        interpreter = Path(sys.base_prefix).resolve()
        for home in HOME_PATHS:
            if not Path(home).is_dir():
                continue
            keep = str(interpreter) if under(str(interpreter), (home,)) else None
            if keep is not None:
                lines.append(f"keep=$(mktemp -d) && mount --bind {shlex.quote(keep)} \"$keep\"")
            mode = "0755" if keep is not None else "0000"
            lines.append(f"mount -t tmpfs -o mode={mode} tmpfs {home}")
            if keep is not None:
                lines.append(f"mkdir -p {shlex.quote(keep)} && mount --move \"$keep\" {shlex.quote(keep)} "
                             f"&& mount -o remount,bind,ro {shlex.quote(keep)}")
    if sandbox.protect_system in ("strict", "full", "yes"):
        protected = ("/",) if sandbox.protect_system == "strict" else ("/usr", "/boot", "/efi") + (
            ("/etc",) if sandbox.protect_system == "full" else ())
        for point in points:
            if under(point, API_FILESYSTEMS) and point != "/":
                continue
            if sandbox.protect_system != "strict" and not under(point, protected):
                continue
            lines.append(read_only(point))
        if sandbox.protect_system != "strict":  # /usr etc. on the root filesystem: bind them read-only
            for path in protected:
                if Path(path).is_dir() and path not in points:
                    lines.append(f"mount --bind {path} {path} && mount -o remount,bind,ro {path}")
    if sandbox.protect_control_groups:
        for point in points:
            if under(point, ("/sys/fs/cgroup",)):
                lines.append(read_only(point))
    caps = ",".join(["-all", *(f"+{c}" for c in sandbox.capabilities)])
    setpriv = ["setpriv", f"--bounding-set={caps}", "--inh-caps=-all"]
    if sandbox.no_new_privileges:
        setpriv.append("--no-new-privs")
    lines.append("exec " + shlex.join([*setpriv, "--", *command]))
    return "\n".join(lines)


def wrap(command: list[str], writable: list[Path], sandbox: Sandbox | None = None) -> list[str]:
    """``command`` run under the unit's sandbox (as root)."""
    return ["unshare", "--mount", "--", "sh", "-c", script(sandbox or read_unit(), command, writable)]
