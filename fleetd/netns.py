"""The network namespace an agent runs in, held by a small container of its own.

Docker runs a DNS server in every container on a user-defined network, at 127.0.0.11. It
answers the names, short ids and addresses (PTR) of every other container on the network,
and forwards the rest upstream, from the host's namespace when the host's resolver is on a
loopback address (CVE-2024-29018; fixed in Engine 23.0.11/25.0.4/26.0, not in 20.10). Libnetwork
starts it for every endpoint on a user-defined network (``needResolver``); nothing in the API
turns it off, and an agent can query it directly whatever /etc/resolv.conf says.

So each agent's namespace is made first, by a holder container on the agents' network (Kubernetes'
pause container): with CAP_NET_ADMIN in that namespace only, it adds a ``prohibit`` route for
127.0.0.11 to the local routing table (looked up before any other), which makes every packet to
Docker's DNS server fail at once (EACCES), then gives up root and sleeps. The agent's container
joins the namespace (``network_mode=container:HOLDER``) only after that, without the capability.
Its /etc/hosts (the holder's) names zone2; nothing else resolves. The holder also turns IPv6 off
(sysctls, applied by runc after Docker set up the namespace), whatever the engine's default.

The holder runs from the zone 2 image (python3, sleep): no other image is needed.
"""

from __future__ import annotations

READY = "fleetd-netns: ready"
# Docker's embedded DNS server, in every container's namespace on a user-defined network.
EMBEDDED_DNS = "127.0.0.11"
# IPv6 off in the namespace: on every interface now ("all") and any made later ("default").
SYSCTLS = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
CAPABILITIES = ["NET_ADMIN", "SETUID", "SETGID"]  # the route; then dropping root (and with it the rest)
NOBODY = 65534

# RTM_NEWROUTE over rtnetlink (no `ip` binary in the image): "prohibit 127.0.0.11/32 table local".
SCRIPT = rf"""
import os, socket, struct, sys
RTM_NEWROUTE, NLMSG_ERROR = 24, 2
FLAGS = 0x1 | 0x4 | 0x200 | 0x400  # NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE
RT_TABLE_LOCAL, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_PROHIBIT, RTA_DST = 255, 4, 0, 8, 1
dst = socket.inet_aton("{EMBEDDED_DNS}")
body = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, RT_TABLE_LOCAL, RTPROT_STATIC, RT_SCOPE_UNIVERSE,
                   RTN_PROHIBIT, 0) + struct.pack("=HH", 4 + len(dst), RTA_DST) + dst
with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as link:
    link.sendto(struct.pack("=IHHII", 16 + len(body), RTM_NEWROUTE, FLAGS, 1, 0) + body, (0, 0))
    reply = link.recv(4096)
kind = struct.unpack_from("=H", reply, 4)[0]
error = struct.unpack_from("=i", reply, 16)[0] if kind == NLMSG_ERROR else -1
if error:
    sys.exit("fleetd-netns: cannot block Docker's DNS server: " + os.strerror(-error))
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})  # root's capabilities go with it
print("{READY}", flush=True)
os.execv("/usr/bin/sleep", ["sleep", "infinity"])
"""
