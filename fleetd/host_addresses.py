"""The addresses of this host (the kernel's view of its own network namespace), which zone 2's forward proxy never
connects to whatever name an agent asks for: a name resolving to the host's own address would reach its services
(the Docker API on a TCP port, the metrics listener, sshd) from the egress network.

Read from procfs rather than by shelling out to ``ip``: ``/proc/net/fib_trie`` lists every local IPv4 address (its
``/32 host LOCAL`` leaves, as ``ip route show table local`` does) and ``/proc/net/if_inet6`` every IPv6 address of
every interface. Both are readable by an unprivileged process and inside the daemon's systemd sandbox.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

FIB_TRIE = Path("/proc/net/fib_trie")
IF_INET6 = Path("/proc/net/if_inet6")


def local_ipv4(fib_trie: str) -> set[str]:
    """The addresses of the ``/32 host LOCAL`` leaves: each ``|-- ADDRESS`` line followed by such a line."""
    found: set[str] = set()
    last: str | None = None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            last = text[4:]
        elif last is not None and text.startswith("/32 host LOCAL"):
            found.add(last)
    return found


def local_ipv6(if_inet6: str) -> set[str]:
    """The addresses of ``if_inet6``'s lines: 32 hex digits first, then the index, prefix, scope, flags, name."""
    found = set()
    for line in if_inet6.splitlines():
        words = line.split()
        if words and len(words[0]) == 32:
            try:
                found.add(str(ipaddress.IPv6Address(int(words[0], 16))))
            except ValueError:
                continue
    return found


def host_addresses(fib_trie: Path = FIB_TRIE, if_inet6: Path = IF_INET6) -> tuple[str, ...]:
    """Every address of this host's network namespace but loopback and link-local ones (refused as such anyway, and
    one per container's veth), sorted; what cannot be read is left out (an IPv6-less kernel has no if_inet6)."""
    found: set[str] = set()
    for path, parse in ((fib_trie, local_ipv4), (if_inet6, local_ipv6)):
        try:
            found |= parse(path.read_text())
        except OSError:
            continue
    kept = [ipaddress.ip_address(a) for a in found]
    return tuple(str(a) for a in sorted(kept, key=lambda a: (a.version, a))
                 if not (a.is_loopback or a.is_link_local))
