"""A TCP address to listen on, as the config and --metrics give it: ``HOST:PORT`` or ``[IPv6]:PORT``."""

from __future__ import annotations

import ipaddress
import re

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def format_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9464``, ``[::1]:9464``, ``localhost:9464`` → (host, port); every interface only if asked."""
    spec = text.strip()
    example = "e.g. 127.0.0.1:9464 (0.0.0.0:9464 for every interface)"
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"--metrics {text!r}: expected [IPv6]:PORT, e.g. [::1]:9464")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"--metrics {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = spec.rpartition(":")
        if not sep:
            raise ValueError(f"--metrics {text!r}: expected HOST:PORT, {example}")
        if not host:
            raise ValueError(f"--metrics {text!r}: give the address to listen on, {example}")
        if ":" in host:
            raise ValueError(f"--metrics {text!r}: put an IPv6 address in brackets, e.g. [::1]:9464")
        if not _HOSTNAME.match(host):
            raise ValueError(f"--metrics {text!r}: {host!r} is not a host name or address")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"--metrics {text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)
