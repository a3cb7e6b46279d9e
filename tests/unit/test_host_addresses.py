"""The host's own addresses, read from procfs (issue 18: zone 2's proxy never connects to them)."""

from __future__ import annotations

from pathlib import Path

from fleetd.host_addresses import host_addresses, local_ipv4, local_ipv6

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 4
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 172.17.0.0/16 2 0 2
           |-- 172.17.0.0
              /16 link UNICAST
           |-- 172.17.0.1
              /32 host LOCAL
           |-- 172.17.255.255
              /32 link BROADCAST
     |-- 192.0.2.2
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 4
     |-- 192.0.2.2
        /32 host LOCAL
"""
IF_INET6 = """fe80000000000000004246fffe895fd3 c15c 40 20 80 br-7386aa2e068d
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
zz
"""


def test_local_addresses_are_the_host_local_leaves_and_every_interface_address() -> None:
    assert local_ipv4(FIB_TRIE) == {"127.0.0.1", "172.17.0.1", "192.0.2.2"}  # not the broadcast, not /8
    assert local_ipv6(IF_INET6) == {"fe80::42:46ff:fe89:5fd3", "::1", "fd00::2"}


def test_loopback_and_link_local_are_left_to_the_rules_that_always_refuse_them(tmp_path: Path) -> None:
    (tmp_path / "fib").write_text(FIB_TRIE)
    (tmp_path / "inet6").write_text(IF_INET6)
    assert host_addresses(tmp_path / "fib", tmp_path / "inet6") == ("172.17.0.1", "192.0.2.2", "fd00::2")
    assert host_addresses(tmp_path / "fib", tmp_path / "none") == ("172.17.0.1", "192.0.2.2")  # no IPv6


def test_this_machine_has_addresses() -> None:
    assert host_addresses()  # procfs is there, with at least Docker's bridge
