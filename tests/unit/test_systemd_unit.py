"""systemd/fleetd.service: systemd itself accepts every line, and the unit agrees with the daemon.

``systemd-analyze verify`` works without systemd as PID 1: it loads the unit into a throw-away
manager. It exits 0 on an unknown key or an unparsable value (it only logs "ignoring"), so a
clean unit here means: exit status 0 *and* no output at all. ``test_verify_catches`` proves that
harness flags typical mistakes. ExecStart must name an existing executable, so the copy that is
verified points at this venv's ``fleetd`` console script instead of /usr/local/bin/fleetd.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleetd import paths

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "fleetd.service"
INSTALLED_EXEC = "/usr/local/bin/fleetd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"

needs_analyze = pytest.mark.skipif(not Path(SYSTEMD_ANALYZE).exists(), reason="systemd-analyze is not installed")


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections -> ordered (key, value) pairs; systemd allows a key more than once."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"directive outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= expected once, found {found}"
    return found[0]


def seconds(value: str) -> float:
    """A systemd time span like ``30s``, ``1min 30s`` or ``90`` (seconds), in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


def runnable_copy(text: str) -> str:
    """The unit with ExecStart pointing at an executable that exists on this machine."""
    script = Path(sys.executable).with_name("fleetd")
    target = str(script if script.exists() else Path(sys.executable))
    assert f"ExecStart={INSTALLED_EXEC} " in text
    return text.replace(f"ExecStart={INSTALLED_EXEC} ", f"ExecStart={target} ")


def verify(text: str, directory: Path) -> tuple[int, str]:
    """``systemd-analyze verify`` on ``text`` saved as fleetd.service; its exit status and output."""
    unit = directory / "fleetd.service"
    unit.write_text(text)
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C"}
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", "--generators=no", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return result.returncode, (result.stdout + result.stderr).strip()


@pytest.fixture(scope="module")
def text() -> str:
    return UNIT.read_text()


@pytest.fixture(scope="module")
def unit(text: str) -> dict[str, list[tuple[str, str]]]:
    return parse_unit(text)


@needs_analyze
def test_systemd_accepts_every_line(text: str, tmp_path: Path) -> None:
    status, output = verify(runnable_copy(text), tmp_path)
    assert (status, output) == (0, ""), output


@needs_analyze
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("WatchdogSec=30s", "WatchdgSec=30s"),  # a misspelled key
        ("Type=notify", "Type=notfy"),  # a misspelled value
        ("TimeoutStopSec=90s", "TimeoutStopSec=ninety"),  # an unparsable time span
        ("[Service]", "[Servce]"),  # a misspelled section
        ("ProtectSystem=strict", "ProtectSystem=strictt"),
    ],
)
def test_verify_catches(text: str, tmp_path: Path, old: str, new: str) -> None:
    """The harness above is meaningful: each of these mistakes makes it fail."""
    broken, count = re.subn(rf"^{re.escape(old)}$", new, runnable_copy(text), count=1, flags=re.MULTILINE)
    assert count == 1, f"no line {old!r} in the unit"
    status, output = verify(broken, tmp_path)
    assert status != 0 or output, f"systemd-analyze did not notice {new!r}"


@needs_analyze
def test_verify_catches_a_missing_executable(text: str, tmp_path: Path) -> None:
    status, output = verify(text.replace(INSTALLED_EXEC, "/nonexistent/fleetd"), tmp_path)
    assert status != 0
    assert "not executable" in output


@needs_analyze
def test_hardening_does_not_regress(text: str, tmp_path: Path) -> None:
    """``systemd-analyze security`` rates the unit 2.7/10 today; fail if it drops below "OK" (<= 3.5)."""
    unit = tmp_path / "fleetd.service"
    unit.write_text(runnable_copy(text))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=35", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "LC_ALL": "C"},
        timeout=60,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no offline security analysis")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_key_directives(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "KillMode") == "mixed"
    assert one(unit, "Service", "ExecStart") == f"{INSTALLED_EXEC} daemon"
    assert "docker.service" in " ".join(values(unit, "Unit", "After")).split()
    assert "docker.service" in " ".join(values(unit, "Unit", "Wants")).split()
    assert not values(unit, "Unit", "Requires"), "Requires=docker.service would stop fleetd with every docker restart"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_timeouts(unit: dict[str, list[tuple[str, str]]]) -> None:
    watchdog = seconds(one(unit, "Service", "WatchdogSec"))
    # The daemon pings every WatchdogSec/2; much below 10 s a busy event loop would be killed.
    assert 10 <= watchdog <= 120
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= 60
    # Startup may wait 30 s for the engine (fleetd.daemon.DOCKER_WAIT) before it reconciles.
    from fleetd.daemon import DOCKER_WAIT

    assert seconds(one(unit, "Service", "TimeoutStartSec")) > DOCKER_WAIT


def test_directories_match_the_daemons_defaults(
    unit: dict[str, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """RuntimeDirectory/StateDirectory/ConfigurationDirectory are where fleetd looks as root under systemd."""
    runtime = one(unit, "Service", "RuntimeDirectory")
    state = one(unit, "Service", "StateDirectory")
    config = one(unit, "Service", "ConfigurationDirectory")
    monkeypatch.setattr(paths, "_is_root", lambda: True)
    monkeypatch.setenv("STATE_DIRECTORY", f"/var/lib/{state}")  # what systemd sets for StateDirectory=
    assert paths.default_socket() == Path("/run") / runtime / "fleetd.sock"
    assert paths.default_state_dir() == Path("/var/lib") / state
    assert paths.DEFAULT_CONFIG.parent == Path("/etc") / config
    monkeypatch.delenv("STATE_DIRECTORY")
    assert paths.default_state_dir() == Path("/var/lib") / state


def test_root_daemon_keeps_what_it_needs(unit: dict[str, list[tuple[str, str]]]) -> None:
    """Hardening must not take away docker.sock, the socket dir, the state dir or iptables."""
    assert not values(unit, "Service", "User"), "the daemon runs as root (docker.sock, iptables)"
    assert not values(unit, "Service", "DynamicUser")
    assert values(unit, "Service", "PrivateNetwork") in ([], ["no"]), "iptables must see the host's network"
    caps = one(unit, "Service", "CapabilityBoundingSet").split()
    assert "CAP_NET_ADMIN" in caps
    assert "CAP_CHOWN" in caps  # secure_socket() gives the socket to group fleetd
    assert "CAP_KILL" in caps  # pidfd signals to agents, which run as another uid
    families = one(unit, "Service", "RestrictAddressFamilies").split()
    assert {"AF_UNIX", "AF_NETLINK"} <= set(families)
    for key in ("InaccessiblePaths", "TemporaryFileSystem"):
        assert not any("/run" in v for v in values(unit, "Service", key)), f"{key}= would hide docker.sock"
    # Agents' disks: losetup needs /dev/loop-control and every /dev/loopN, which a private /dev would not show.
    assert values(unit, "Service", "PrivateDevices") in ([], ["no"])
    assert one(unit, "Service", "DevicePolicy") == "closed"
    assert set(values(unit, "Service", "DeviceAllow")) == {"/dev/loop-control rw", "block-loop rw"}


def test_every_directive_is_explained(text: str) -> None:
    """Each directive has a comment line right above it (a block of comments is fine)."""
    previous = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and line[0] not in "#;[" and "=" in line:
            assert previous.startswith("#"), f"line {number} has no comment above it: {line}"
        previous = line
