"""The agent namespace holder's script (run on the real engine by tests/integration/test_agent_network.py)."""

from __future__ import annotations

from fleetd import netns


def test_the_holder_script_compiles_and_says_when_it_is_ready() -> None:
    compile(netns.SCRIPT, "fleetd-netns", "exec")
    assert netns.READY in netns.SCRIPT and netns.EMBEDDED_DNS in netns.SCRIPT
    # It drops root before it reports ready: the sleeping holder keeps no capability.
    assert netns.SCRIPT.index("os.setuid") < netns.SCRIPT.index(netns.READY)


def test_ipv6_is_off_for_interfaces_now_and_later() -> None:
    assert netns.SYSCTLS == {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
