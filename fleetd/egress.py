"""Egress policy (issue 18): the hosts an agent may reach, by name, through zone 2's forward proxy. Pure: no I/O.

A role's ``egress`` is a list of patterns (``fleetd role set NAME --egress PATTERN[,PATTERN...]``, or
``[roles.X] egress = [...]``); ``spawn --egress`` may narrow it, never widen it (``narrow``). A pattern is:

- ``host`` (``pypi.org``): that name exactly;
- ``*.domain`` (``*.githubusercontent.com``): any name under the domain, at any depth, but not the domain itself;
- either with ``:port`` (``example.com:8443``); without one, ports 80 and 443;
- ``@preset`` (``@pypi``): the published host list of a service (``PRESETS``), mixed freely with patterns;
- ``none`` alone: no egress at all (the default, and today's behaviour).

Rules where the issue is silent:

- Names are compared in their ASCII form: lowercase, one trailing dot dropped, Unicode names converted with IDNA 2008
  and UTS 46 mapping (``idna.encode(..., uts46=True)``, what aiohttp's yarl and requests use), so ``bücher.example``
  and ``xn--bcher-kva.example`` are the same pattern. ASCII names are checked as DNS labels: letters, digits, ``-``
  and ``_`` (Docker container names may hold one), no label starting or ending with ``-``, 1-63 characters each,
  253 in all. ``xn--`` labels are taken as written (compared as ASCII, never decoded).
- IP addresses are refused in every spelling: ``10.0.0.1``, ``::1``, ``[::1]:443``, and the names a resolver takes
  for IPv4 (``127.1``, ``0x7f.1``: a last label of digits, or of ``0x`` and hex digits, as the WHATWG URL standard
  reads them). A policy names hosts; an address would skip the name check and the DNS answer zone 2 checks.
- A wildcard is only the whole first label (``*.a.b``); ``*`` alone, ``a.*.com``, ``*a.com`` and ``*.com`` are
  refused, the last as too broad: a wildcard must leave at least two labels (``*.co.uk`` passes: fleetd ships no
  public-suffix list).
- Schemes, paths, user info, queries (``https://x``, ``x/y``) are refused: a pattern names a host, not a URL.

The policy travels from the daemon to zone 2 in an agent's registration as ``EgressPolicy.to_json()`` (its patterns,
presets expanded, in ASCII) and comes back with ``EgressPolicy.from_json``. Addresses are judged apart from names:
``refused_address`` says which addresses zone 2 never connects to, whatever name they came from.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import idna

from fleetd.errors import InvalidRequest
from fleetd.units import parse_size

DEFAULT_PORTS = (80, 443)
NONE = "none"
MAX_NAME = 253  # RFC 1035 2.3.4: 255 octets on the wire, 253 characters written without the trailing dot
MAX_LABEL = 63
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")  # LDH (and _), no hyphen at either end
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")  # what inet_aton and the WHATWG URL parser read as IPv4
_PORT = re.compile(r"[0-9]{1,5}")
SYNTAX = "use host, *.domain or either with :port, e.g. pypi.org, *.example.com, example.com:8443"

# The published host lists. Kept small: the hosts a tool needs to fetch, not every host a service owns.
PRESETS: dict[str, tuple[str, ...]] = {
    # pip reads the index at pypi.org (the Simple API, PEP 503/691) and downloads the files it links to from
    # files.pythonhosted.org: the pair pip's documentation and PyPI's support threads give for firewalls and
    # --trusted-host (e.g. https://github.com/pypa/pip/issues/5288; PyPI's project pages list each file's
    # "Download URL" on files.pythonhosted.org).
    "pypi": ("pypi.org", "files.pythonhosted.org"),
    # GitHub's "Communicating with self-hosted runners" (https://docs.github.com/en/actions/concepts/runners/
    # communicating-with-self-hosted-runners) lists github.com and api.github.com (git over HTTPS, the REST API),
    # codeload.github.com (archives), objects.githubusercontent.com (release assets) and, as its wildcard form,
    # *.githubusercontent.com (raw.githubusercontent.com and the other content hosts); the REST API's /meta
    # "domains" lists the same. The explicit names stay so that `spawn --egress` may narrow to one of them.
    "github": (
        "github.com", "api.github.com", "codeload.github.com", "objects.githubusercontent.com",
        "raw.githubusercontent.com", "*.githubusercontent.com",
    ),
    # npm's default registry (npm help registry: "https://registry.npmjs.org"), which also serves the tarballs.
    "npm": ("registry.npmjs.org",),
}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def presets() -> dict[str, list[str]]:
    """Each preset's name (without the ``@``) and the patterns it expands to, for ``fleetd egress presets``."""
    return {name: list(patterns) for name, patterns in sorted(PRESETS.items())}


@dataclass(frozen=True)
class Pattern:
    """One parsed pattern: ``domain`` in ASCII; with ``wildcard``, the names strictly under it; ``port`` None
    for 80 and 443."""

    domain: str
    wildcard: bool = False
    port: int | None = None

    @property
    def ports(self) -> tuple[int, ...]:
        return DEFAULT_PORTS if self.port is None else (self.port,)

    def names(self, host: str) -> bool:
        """Whether ``host`` (already canonical, see ``canonical_host``) is one of the names this pattern allows."""
        if self.wildcard:
            return host.endswith("." + self.domain)
        return host == self.domain

    def matches(self, host: str, port: int) -> bool:
        """Whether a connection to canonical ``host`` on ``port`` is allowed by this pattern."""
        return port in self.ports and self.names(host)

    def names_all_of(self, other: Pattern) -> bool:
        """Whether every name ``other`` allows is a name this pattern allows (ports aside)."""
        if not self.wildcard:
            return not other.wildcard and other.domain == self.domain
        return (other.wildcard and other.domain == self.domain) or other.domain.endswith("." + self.domain)

    def __str__(self) -> str:
        text = f"*.{self.domain}" if self.wildcard else self.domain
        return text if self.port is None else f"{text}:{self.port}"


@dataclass(frozen=True)
class EgressPolicy:
    """The parsed list of an agent's (or a role's) patterns, in the order given, without duplicates.

    Empty is ``none``: no egress. ``str()`` is the form for events and listings (``none``, or the patterns joined
    by commas), which ``parse_egress`` reads back as the same policy.
    """

    patterns: tuple[Pattern, ...] = ()

    @property
    def enabled(self) -> bool:
        """Whether the agent may reach anything at all (it then gets the proxy variables)."""
        return bool(self.patterns)

    def allows(self, host: str, port: int) -> bool:
        """Whether a connection to ``host`` (a name as an agent sent it) on ``port`` is allowed.

        The name is made canonical first (case, trailing dot, IDNA); anything that is not a valid host name
        (an IP literal in any form, an empty or over-long label, a bracketed address) is never allowed.
        """
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            return False
        try:
            name = canonical_host(host)
        except InvalidRequest:
            return False
        return any(p.matches(name, port) for p in self.patterns)

    def covers(self, pattern: Pattern) -> bool:
        """Whether every (name, port) ``pattern`` allows is allowed here; each port may come from another pattern
        (``x.com:80`` and ``x.com:443`` together cover ``x.com``)."""
        return all(any(port in p.ports and p.names_all_of(pattern) for p in self.patterns)
                   for port in pattern.ports)

    def to_json(self) -> list[str]:
        """The patterns as strings (presets expanded, ASCII): what zone 2 receives in an agent's registration."""
        return [str(p) for p in self.patterns]

    @classmethod
    def from_json(cls, data: object, what: str = "egress") -> EgressPolicy:
        """The policy ``to_json`` wrote: a list of pattern strings (``[]`` for none); no presets, no ``none``.

        Raises ``InvalidRequest`` on anything else: a registration is checked like any other input.
        """
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            raise InvalidRequest(f"{what}: expected a list of patterns, got {data!r:.80}")
        if any(item.lower() == NONE for item in data):
            raise InvalidRequest(f"{what}: 'none' is written as an empty list")
        return cls(_unique(parse_pattern(item, what) for item in data))

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.patterns) or NONE


NO_EGRESS = EgressPolicy()


def parse_egress(value: object, flag: str = "--egress") -> EgressPolicy:
    """The policy from the flag's text (``@pypi,docs.python.org``), a list of items (a TOML array, an API field), or
    None (no egress). ``none`` must stand alone, ``[]`` is none too (what ``to_json`` writes for it); presets are
    expanded in place; duplicates are dropped."""
    if value is None or (isinstance(value, list | tuple) and not value):
        return NO_EGRESS
    items = _items(value, flag)
    if NONE in (item.lower() for item in items):
        if len(items) > 1:
            raise InvalidRequest(f"{flag}: 'none' means no egress and cannot be mixed with patterns")
        return NO_EGRESS
    return EgressPolicy(_unique(p for item in items for p in _expand(item, flag)))


def parse_pattern(text: str, flag: str = "--egress") -> Pattern:
    """One pattern (``host``, ``*.domain``, either with ``:port``); raises ``InvalidRequest`` naming it and why."""
    if not text:
        raise InvalidRequest(f"{flag}: empty pattern: {SYNTAX}")
    if "/" in text or "@" in text or "?" in text or "#" in text:
        raise InvalidRequest(f"{flag}: {text!r} is not a host pattern: a pattern names a host, not a URL; {SYNTAX}")
    host, port = _split_port(text, flag)
    wildcard = host.startswith("*.")
    domain = host[2:] if wildcard else host
    if "*" in domain:
        raise InvalidRequest(f"{flag}: {text!r}: a wildcard may only be the whole first label, as in *.example.com")
    try:
        domain = canonical_host(domain)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{flag}: {text!r}: {exc.message}") from None
    if wildcard and "." not in domain:
        raise InvalidRequest(f"{flag}: {text!r} is too broad: a wildcard must leave at least two labels, "
                             f"as in *.example.{domain}")
    return Pattern(domain, wildcard, port)


def canonical_host(host: str) -> str:
    """The ASCII form names are compared in: lowercase, one trailing dot dropped, Unicode through IDNA (UTS 46).

    Raises ``InvalidRequest`` (a message without a flag, for the caller to prefix) when ``host`` is not a host name:
    an IP address in any spelling, an empty label, a label over 63 characters or holding other than letters, digits,
    ``-`` and ``_``, a label starting or ending with ``-``, or a name over 253 characters.
    """
    if not isinstance(host, str) or not host:
        raise InvalidRequest("empty host name")
    _refuse_ip(host)
    name = host.lower() if host.isascii() else _to_ascii(host)
    name = name.removesuffix(".")
    if not name:
        raise InvalidRequest("empty host name")
    if len(name) > MAX_NAME:
        raise InvalidRequest(f"the name is {len(name)} characters long, more than {MAX_NAME}")
    labels = name.split(".")
    for label in labels:
        _check_label(label)
    _refuse_ip(name)
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise InvalidRequest("a name ending in a numeric label is read as an IPv4 address; name the host instead")
    return name


def narrow(role_policy: EgressPolicy, spawn_patterns: object, flag: str = "--egress",
           role: str | None = None) -> EgressPolicy:
    """The agent's policy: the role's, or ``spawn --egress`` when given, which may only narrow the role's list.

    ``spawn_patterns`` is what ``parse_egress`` reads (None keeps the role's list; ``none`` narrows to nothing).
    Every spawn pattern must be covered by the role's: a host by an equal host or a ``*.domain`` it is under, a
    ``*.a.b`` by ``*.a.b`` or ``*.b``, and each of its ports by a pattern with that port. A pattern that would widen
    the list is refused (``InvalidRequest``), naming it and the role's list.
    """
    if spawn_patterns is None:
        return role_policy
    wanted = parse_egress(spawn_patterns, flag)
    whose = f"role {role!r}" if role else "the role"
    for pattern in wanted.patterns:
        if not role_policy.covers(pattern):
            raise InvalidRequest(
                f"{flag}: {pattern} is not within the egress of {whose} ({role_policy}); "
                "spawn --egress may only narrow the role's list, never widen it"
            )
    return wanted


# Cloud metadata services at addresses not already refused as link-local.
METADATA_ADDRESSES: dict[IPAddress, str] = {
    ipaddress.ip_address("fd00:ec2::254"): "AWS instance metadata (IPv6)",
    ipaddress.ip_address("100.100.100.200"): "Alibaba Cloud instance metadata",
}
LINK_LOCAL_METADATA = ipaddress.ip_address("169.254.169.254")  # AWS, GCP, Azure, OCI, OpenStack...
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # RFC 1122 "this host on this network"; Linux may route 0.x to us
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address sits in the last 32 bits


def refused_address(ip: IPAddress | str, host_addresses: Iterable[IPAddress | str] = (),
                    agent_networks: Iterable[IPNetwork | str] = ()) -> str | None:
    """Why zone 2 must not connect to ``ip`` whatever name it came from, or None when it may.

    Refused: the unspecified address (and 0.0.0.0/8), loopback, link-local (169.254.0.0/16 with cloud metadata
    169.254.169.254, fe80::/10), multicast, the IPv4 broadcast address, the other cloud metadata addresses
    (``METADATA_ADDRESSES``), an IPv4 address of any of these in IPv4-mapped (``::ffff:127.0.0.1``) or NAT64
    (``64:ff9b::7f00:1``) form, ``host_addresses`` (the host's own), and any address inside ``agent_networks``.
    Private ranges (RFC 1918, fc00::/7) are allowed: test hosts live on a Docker network. A string that is not an
    address is refused too.
    """
    try:
        address = _address(ip)
    except ValueError:
        return f"{ip!r} is not an IP address"
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = refused_address(embedded, host_addresses, agent_networks)
        return None if reason is None else f"{address} embeds {embedded}: {reason}"
    reason = _special(address)
    if reason:
        return f"{address} is {reason}"
    if any(address == _address(own) for own in host_addresses):
        return f"{address} is an address of the host itself"
    for network in agent_networks:
        net = ipaddress.ip_network(network, strict=False)
        if address.version == net.version and address in net:
            return f"{address} is inside the agents' network {net}"
    return None


def _special(address: IPAddress) -> str | None:
    """The kind of address it is, among those never reached, or None."""
    if address.is_unspecified or address in THIS_NETWORK:
        return "unspecified (this host)"
    if address.is_loopback:
        return "a loopback address"
    if address == LINK_LOCAL_METADATA:
        return "link-local: the cloud metadata service"
    if address in METADATA_ADDRESSES:
        return f"{METADATA_ADDRESSES[address]}"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    return None


def _address(ip: IPAddress | str) -> IPAddress:
    """An address without an IPv6 zone (``fe80::1%eth0`` is fe80::1: the zone changes no rule here)."""
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return ipaddress.IPv6Address(address.packed)
    return address


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: IPv4-mapped (the kernel connects to it) or NAT64."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(address.packed[-4:])
    return None


def _items(value: object, flag: str) -> list[str]:
    """The items of a comma-separated string or a list of strings, stripped of spaces."""
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        parts = [part for v in value for part in v.split(",")]
    else:
        raise InvalidRequest(f"{flag}: expected patterns separated by commas or a list of them, got {value!r:.80}")
    items = [part.strip() for part in parts]
    if not items or any(not item for item in items):
        raise InvalidRequest(f"{flag}: empty pattern in {value!r:.80}: give patterns separated by commas, or none")
    return items


def _expand(item: str, flag: str) -> Sequence[Pattern]:
    """A preset's patterns, or the one pattern the item is."""
    if not item.startswith("@"):
        return [parse_pattern(item, flag)]
    name = item[1:].lower()
    if name not in PRESETS:
        known = ", ".join(f"@{n}" for n in sorted(PRESETS))
        raise InvalidRequest(f"{flag}: unknown preset {item!r} (known presets: {known})")
    return [parse_pattern(p, f"{flag} {item}") for p in PRESETS[name]]


def _unique(patterns: Iterable[Pattern]) -> tuple[Pattern, ...]:
    return tuple(dict.fromkeys(patterns))


def _split_port(text: str, flag: str) -> tuple[str, int | None]:
    """``host`` and its port (None when absent); a bracketed or bare IPv6 address is refused here."""
    if text.startswith("[") or text.count(":") > 1:
        raise InvalidRequest(f"{flag}: {text!r}: IP addresses are not allowed, only host names")
    host, colon, port = text.partition(":")
    if not colon:
        return host, None
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise InvalidRequest(f"{flag}: {text!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def _refuse_ip(name: str) -> None:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return
    raise InvalidRequest("IP addresses are not allowed, only host names")


def _to_ascii(name: str) -> str:
    """A Unicode name in ASCII (IDNA 2008, UTS 46 mapping: full-width dots and digits become ASCII). A trailing dot
    stays (one, which the caller drops); two are an empty label."""
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidRequest(f"not a valid internationalized host name ({exc})") from None


def _check_label(label: str) -> None:
    if not label:
        raise InvalidRequest("empty label (two dots in a row, or a leading dot)")
    if len(label) > MAX_LABEL:
        raise InvalidRequest(f"label {label[:20]!r}... is {len(label)} characters long, more than {MAX_LABEL}")
    if not _LABEL.fullmatch(label):
        raise InvalidRequest(f"invalid label {label!r}: letters, digits, - and _ only, not starting or ending with -")


# -- where an agent's policy comes from -------------------------------------------------------------------------------
EGRESS_KEYS = ("egress", "egress_max_bytes")  # in [roles.X], `role set`'s body and a spawn request
DEFAULT_MAX_BYTES = 1 << 30  # per agent and UTC day, in and out together (the default: 1g)
MIN_MAX_BYTES = 1 << 10
MAX_MAX_BYTES = 1 << 40


@dataclass(frozen=True)
class EgressSettings:
    """A level's egress settings (``[roles.X]``, ``role set``, ``spawn``); None: not set here, fall through."""

    policy: EgressPolicy | None = None
    max_bytes: int | None = None  # per agent and UTC day, in and out together

    def to_json(self) -> dict[str, object]:
        return {"egress": None if self.policy is None else self.policy.to_json(), "egress_max_bytes": self.max_bytes}


def egress_settings(table: dict[str, object], where: str | None) -> EgressSettings:
    """The egress keys of a config table, an API body or a stored role row, validated; errors name ``where``'s keys
    (``roles.X.egress``, ``role X.egress``) or, with ``where`` None (a spawn), the flags."""
    names = ("--egress", "--egress-max-bytes") if where is None else (f"{where}.egress", f"{where}.egress_max_bytes")
    policy = None if table.get("egress") is None else parse_egress(table["egress"], names[0])
    raw = table.get("egress_max_bytes")
    max_bytes = None
    if raw is not None:
        if not isinstance(raw, str | int) or isinstance(raw, bool):
            raise InvalidRequest(f"{names[1]}: expected a size like 1g or 500m, got {raw!r:.40}")
        max_bytes = parse_size(raw, names[1])
        if not MIN_MAX_BYTES <= max_bytes <= MAX_MAX_BYTES:
            raise InvalidRequest(f"{names[1]}: {raw!r} must be between 1k and 1t")
    return EgressSettings(policy, max_bytes)


def agent_egress(levels: Sequence[EgressSettings], spawn: EgressSettings = EgressSettings()) -> EgressSettings:
    """An agent's effective egress: the role's (the first level that sets each key: ``role set``, then
    ``[roles.X]``; else no egress and DEFAULT_MAX_BYTES), narrowed by ``spawn``.

    The spawn's patterns were checked against the role when it spawned (``narrow``); the role may have been narrowed
    since: only the spawn patterns the role still covers are kept, so that narrowing a role takes effect on its
    running agents at once, never widens one. The byte cap is the smaller of the spawn's and the role's.
    """
    policy = next((level.policy for level in levels if level.policy is not None), NO_EGRESS)
    max_bytes = next((level.max_bytes for level in levels if level.max_bytes is not None), DEFAULT_MAX_BYTES)
    if spawn.policy is not None:
        policy = EgressPolicy(tuple(p for p in spawn.policy.patterns if policy.covers(p)))
    if spawn.max_bytes is not None:
        max_bytes = min(max_bytes, spawn.max_bytes)
    return EgressSettings(policy, max_bytes)
