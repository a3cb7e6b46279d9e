"""The iptables adapter: the rules that make zone 2 the agents' only way out.

An internal Docker network still routes to the host's own address on its
bridge, so every host port is reachable from agents unless closed here. And
with inter-container traffic off on the agents' bridge (no agent reaches
another), zone 2 itself must be let through explicitly. Every rule carries a
comment naming the instance, so teardown removes exactly ours.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess

from fleetd.errors import RuntimeFailure


class Firewall:
    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.tag = f"fleetd:{instance}"
        # iptables chain names are at most 28 characters.
        self.chain = "FLEETD-" + hashlib.sha256(instance.encode()).hexdigest()[:12]
        self.binary = shutil.which("iptables") or "iptables"

    def _run(self, *args: str, check: bool = True) -> str:
        result = subprocess.run([self.binary, "-w", *args], capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeFailure(f"iptables {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def apply(self, bridge: str, zone2_ip: str) -> None:
        """Agents: to zone 2 only; nothing to the host (but answers to its probes), nothing to each other."""
        self.remove()
        comment = ["-m", "comment", "--comment", self.tag]
        self._run("-N", self.chain)
        # Answers to connections the host opened (the daemon's HTTP and TCP probes) come back in; an agent
        # still cannot open a connection to the host.
        self._run("-A", self.chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        self._run("-A", self.chain, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")
        self._run("-A", self.chain, "-j", "REJECT", "--reject-with", "icmp-port-unreachable")
        self._run("-I", "INPUT", "-i", bridge, *comment, "-j", self.chain)
        self._run("-I", "DOCKER-USER", "-i", bridge, "-o", bridge, "-s", zone2_ip, *comment, "-j", "ACCEPT")
        self._run("-I", "DOCKER-USER", "-i", bridge, "-o", bridge, "-d", zone2_ip, *comment, "-j", "ACCEPT")

    def remove(self) -> int:
        """Delete every rule and chain of this instance; return how many rules went."""
        removed = 0
        for chain in ("INPUT", "DOCKER-USER"):
            for line in self._run("-S", chain, check=False).splitlines():
                words = shlex.split(line)
                if words[:1] == ["-A"] and f"{self.tag}" in words:
                    self._run("-D", *words[1:], check=False)
                    removed += 1
        self._run("-F", self.chain, check=False)
        self._run("-X", self.chain, check=False)
        return removed

    def rules(self) -> list[str]:
        """This instance's rules, as ``iptables -S`` prints them."""
        out = []
        for chain in ("INPUT", "DOCKER-USER", self.chain):
            for line in self._run("-S", chain, check=False).splitlines():
                if self.tag in line or line.startswith(f"-A {self.chain}"):
                    out.append(line)
        return out
