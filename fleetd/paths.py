"""Default locations: system-wide as root, per-user otherwise (like systemd)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/fleetd/config.toml")


def _is_root() -> bool:
    return os.geteuid() == 0


def default_config() -> Path:
    """``$CONFIGURATION_DIRECTORY/config.toml`` under systemd, else /etc/fleetd/config.toml."""
    if os.environ.get("CONFIGURATION_DIRECTORY"):
        return Path(os.environ["CONFIGURATION_DIRECTORY"].split(":")[0]) / "config.toml"
    return DEFAULT_CONFIG


def default_socket() -> Path:
    """``/run/fleetd/fleetd.sock`` as root (or in systemd's RuntimeDirectory), else under ``$XDG_RUNTIME_DIR``."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]) / "fleetd.sock"
    if _is_root():
        return Path("/run/fleetd/fleetd.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/fleetd-{os.getuid()}"
    return Path(runtime) / "fleetd" / "fleetd.sock"


def default_state_dir() -> Path:
    """``/var/lib/fleetd`` as root (systemd's StateDirectory), else under ``$XDG_STATE_HOME``."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if _is_root():
        return Path("/var/lib/fleetd")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "fleetd"
