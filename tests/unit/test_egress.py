"""The egress policy's pure core (issue 18): patterns, narrowing, presets, refused addresses."""

from __future__ import annotations

import ipaddress
import re

import pytest

from fleetd.egress import (
    NO_EGRESS,
    PRESETS,
    EgressPolicy,
    Pattern,
    canonical_host,
    narrow,
    parse_egress,
    parse_pattern,
    presets,
    refused_address,
)
from fleetd.errors import InvalidRequest

# --- patterns -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("pypi.org", Pattern("pypi.org")),
        ("PyPI.ORG.", Pattern("pypi.org")),
        ("*.example.com", Pattern("example.com", wildcard=True)),
        ("*.Example.COM.:8443", Pattern("example.com", wildcard=True, port=8443)),
        ("example.com:1", Pattern("example.com", port=1)),
        ("example.com:65535", Pattern("example.com", port=65535)),
        ("mirror", Pattern("mirror")),  # a Docker network alias may be one label
        ("pypi_mirror.test", Pattern("pypi_mirror.test")),
        ("r3---sn-abc.googlevideo.com", Pattern("r3---sn-abc.googlevideo.com")),
        ("Bücher.example", Pattern("xn--bcher-kva.example")),
        ("xn--bcher-kva.example", Pattern("xn--bcher-kva.example")),
        ("*.bücher.example:443", Pattern("xn--bcher-kva.example", wildcard=True, port=443)),
        ("例え.テスト", Pattern("xn--r8jz45g.xn--zckzah")),
        ("straße.de", Pattern("xn--strae-oqa.de")),  # IDNA 2008: ß stays (2003 made it "ss")
        ("a。b.example", Pattern("a.b.example")),  # UTS 46 maps the ideographic full stop
        ("a" * 63 + ".com", Pattern("a" * 63 + ".com")),
    ],
)
def test_patterns_read_in_ascii_lowercase(text: str, pattern: Pattern) -> None:
    assert parse_pattern(text) == pattern


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty pattern"),
        ("10.0.0.1", "IP addresses are not allowed"),
        ("10.0.0.1:443", "IP addresses are not allowed"),
        ("::1", "IP addresses are not allowed"),
        ("[::1]", "IP addresses are not allowed"),
        ("[::1]:443", "IP addresses are not allowed"),
        ("fe80::1%eth0", "IP addresses are not allowed"),
        ("127.0.0.1.", "IP addresses are not allowed"),
        ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "IP addresses are not allowed"),  # full-width 127.0.0.1
        ("127.1", "numeric label"),  # inet_aton reads 127.0.0.1
        ("0x7f.1", "numeric label"),
        ("example.123", "numeric label"),
        ("*", "wildcard"),
        ("*.com", "too broad"),
        ("*.com:443", "too broad"),
        ("a.*.com", "wildcard"),
        ("*a.example.com", "wildcard"),
        ("*.*.example.com", "wildcard"),
        ("a..com", "empty label"),
        (".example.com", "empty label"),
        ("example.com..", "empty label"),
        ("a" * 64 + ".com", "more than 63"),
        (".".join(["a" * 63] * 4), "more than 253"),
        ("-a.com", "invalid label"),
        ("a-.com", "invalid label"),
        ("a b.com", "invalid label"),
        ("a\x00b.com", "invalid label"),
        ("example.com:0", "port must be"),
        ("example.com:65536", "port must be"),
        ("example.com:", "port must be"),
        ("example.com:http", "port must be"),
        ("example.com:-1", "port must be"),
        ("https://example.com", "not a URL"),
        ("example.com/path", "not a URL"),
        ("user@example.com", "not a URL"),
        ("example.com?q", "not a URL"),
        ("a\u200db.example", "internationalized"),  # a joiner where IDNA 2008 refuses it
    ],
)
def test_bad_patterns_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why) as raised:
        parse_pattern(text)
    assert raised.value.message.startswith("--egress: ")


def test_253_characters_is_the_longest_name() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    assert parse_pattern(name).domain == name
    assert parse_pattern(name + ".").domain == name


def test_a_refusal_names_the_flag_given() -> None:
    with pytest.raises(InvalidRequest, match=r"^roles\.web\.egress: '\*': a wildcard"):
        parse_pattern("*", "roles.web.egress")


# --- the policy ---------------------------------------------------------------------------------------------------


def test_none_and_nothing_mean_no_egress() -> None:
    for value in (None, "none", "NONE", " none ", ["none"], []):
        policy = parse_egress(value)
        assert policy == NO_EGRESS and not policy.enabled and str(policy) == "none"
        assert not policy.allows("example.com", 443)


@pytest.mark.parametrize(
    ("value", "why"),
    [("", "empty pattern"), ("a.com,,b.com", "empty pattern"), ("a.com,", "empty pattern"),
     ("none,a.com", "cannot be mixed"), (["a.com", "none"], "cannot be mixed"), (42, "expected patterns"),
     (["a.com", 3], "expected patterns"), ("@nosuch", r"unknown preset '@nosuch' \(known presets: @github, @npm")],
)
def test_bad_lists_are_refused(value: object, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        parse_egress(value)


def test_a_host_pattern_allows_that_name_on_80_and_443_only() -> None:
    policy = parse_egress("pypi.org")
    assert policy.enabled
    assert policy.allows("pypi.org", 443) and policy.allows("pypi.org", 80)
    assert policy.allows("PYPI.org.", 443)  # case and a trailing dot do not matter
    assert not policy.allows("pypi.org", 8443)
    assert not policy.allows("www.pypi.org", 443)
    assert not policy.allows("pypi.org.evil.com", 443)
    assert not policy.allows("evilpypi.org", 443)


def test_a_port_narrows_a_pattern_to_that_port() -> None:
    policy = parse_egress("example.com:8443")
    assert policy.allows("example.com", 8443)
    assert not policy.allows("example.com", 443) and not policy.allows("example.com", 80)


def test_a_wildcard_allows_subdomains_at_any_depth_but_not_the_domain() -> None:
    policy = parse_egress("*.example.com")
    assert policy.allows("a.example.com", 443) and policy.allows("a.b.example.com", 80)
    assert not policy.allows("example.com", 443)
    assert not policy.allows("badexample.com", 443)
    assert not policy.allows("a.example.com.evil", 443)


def test_unicode_names_compare_in_their_ascii_form() -> None:
    policy = parse_egress("bücher.example")
    assert policy.allows("xn--bcher-kva.example", 443) and policy.allows("BÜCHER.example", 443)
    assert parse_egress("xn--bcher-kva.example").allows("bücher.example", 443)


@pytest.mark.parametrize(
    "host",
    ["", "10.0.0.1", "::1", "[::1]", "127.1", "pypi.org:443", "pypi..org", "a" * 300, "pypi.org/x", "*.pypi.org"],
)
def test_what_is_no_host_name_is_never_allowed_and_never_raises(host: str) -> None:
    policy = parse_egress("pypi.org,*.pypi.org")
    assert policy.allows(host, 443) is False


@pytest.mark.parametrize("port", [0, -1, 65536, True])
def test_impossible_ports_are_never_allowed(port: int) -> None:
    assert not parse_egress("pypi.org:1").allows("pypi.org", port)


def test_the_string_form_reads_back_as_the_same_policy() -> None:
    policy = parse_egress(" @pypi , *.Bücher.example:8443,docs.python.org,pypi.org ")
    text = str(policy)
    assert text == "pypi.org,files.pythonhosted.org,*.xn--bcher-kva.example:8443,docs.python.org"
    assert parse_egress(text) == policy


def test_a_list_and_a_comma_string_are_the_same() -> None:
    assert parse_egress(["a.com", "b.com:81"]) == parse_egress("a.com,b.com:81") == parse_egress(["a.com,b.com:81"])


def test_json_round_trip() -> None:
    policy = parse_egress("@github,docs.python.org:8080")
    data = policy.to_json()
    assert data[0] == "github.com" and data[-1] == "docs.python.org:8080"
    assert EgressPolicy.from_json(data) == policy
    assert EgressPolicy.from_json([]) == NO_EGRESS
    assert NO_EGRESS.to_json() == []


@pytest.mark.parametrize("data", [None, "pypi.org", ["@pypi"], ["none"], ["10.0.0.1"], [1], {"a": 1}])
def test_from_json_is_strict(data: object) -> None:
    with pytest.raises(InvalidRequest, match=r"^egress"):
        EgressPolicy.from_json(data)


def test_canonical_host() -> None:
    assert canonical_host("WWW.Example.COM.") == "www.example.com"
    assert canonical_host("Bücher.Example") == "xn--bcher-kva.example"
    for bad in ("", "1.2.3.4", "[::1]", "a..b", "*.a.b"):
        with pytest.raises(InvalidRequest):
            canonical_host(bad)


# --- narrowing ----------------------------------------------------------------------------------------------------

ROLE = parse_egress("pypi.org,*.example.com,api.test:8443,x.test:80,x.test:443")


@pytest.mark.parametrize(
    "spawn",
    ["pypi.org", "pypi.org:443", "pypi.org:80", "a.example.com", "a.b.example.com:443", "*.example.com",
     "*.a.example.com", "*.a.example.com:80", "api.test:8443", "x.test", "x.test:443", "pypi.org,a.example.com"],
)
def test_spawn_may_narrow_the_role_list(spawn: str) -> None:
    assert narrow(ROLE, spawn) == parse_egress(spawn)


@pytest.mark.parametrize(
    ("spawn", "widening"),
    [("files.pythonhosted.org", "files.pythonhosted.org"), ("pypi.org:8443", "pypi.org:8443"),
     ("example.com", "example.com"), ("*.com", None), ("*.other.com", r"\*\.other\.com"),
     ("api.test", "api.test"), ("api.test:443", "api.test:443"), ("pypi.org,other.test", "other.test"),
     ("*.pypi.org", r"\*\.pypi\.org"), ("x.test:8080", "x.test:8080"), ("@pypi", "files.pythonhosted.org")],
)
def test_spawn_may_not_widen_the_role_list(spawn: str, widening: str | None) -> None:
    with pytest.raises(InvalidRequest) as raised:
        narrow(ROLE, spawn, role="web")
    message = raised.value.message
    if widening:  # else refused as a pattern before any comparison
        assert re.search(f"--egress: {widening} is not within the egress of role 'web' \\({re.escape(str(ROLE))}\\)",
                         message), message
        assert "may only narrow" in message


def test_no_spawn_list_keeps_the_role_list_and_none_narrows_to_nothing() -> None:
    assert narrow(ROLE, None) is ROLE
    assert narrow(ROLE, "none") == NO_EGRESS
    assert narrow(NO_EGRESS, "none") == NO_EGRESS


def test_a_role_without_egress_can_not_be_widened() -> None:
    with pytest.raises(InvalidRequest, match=r"pypi.org is not within the egress of the role \(none\)"):
        narrow(NO_EGRESS, "pypi.org")


def test_a_preset_narrows_a_role_that_holds_it() -> None:
    role = parse_egress("@github,@pypi")
    assert narrow(role, "@pypi") == parse_egress("@pypi")
    assert narrow(role, "raw.githubusercontent.com,user-images.githubusercontent.com").enabled


# --- presets ------------------------------------------------------------------------------------------------------


def test_presets_list_their_patterns() -> None:
    listed = presets()
    assert listed["pypi"] == ["pypi.org", "files.pythonhosted.org"]
    assert {"github.com", "api.github.com", "codeload.github.com", "objects.githubusercontent.com",
            "raw.githubusercontent.com", "*.githubusercontent.com"} == set(listed["github"])
    assert listed["npm"] == ["registry.npmjs.org"]
    listed["pypi"].append("evil.test")  # a copy: the table itself does not change
    assert "evil.test" not in PRESETS["pypi"]


def test_every_preset_pattern_parses_to_itself() -> None:
    for patterns in PRESETS.values():
        for text in patterns:
            assert str(parse_pattern(text)) == text


def test_presets_mix_with_patterns() -> None:
    policy = parse_egress("@pypi,docs.python.org,@PyPI")
    assert [str(p) for p in policy.patterns] == ["pypi.org", "files.pythonhosted.org", "docs.python.org"]
    assert policy.allows("files.pythonhosted.org", 443) and policy.allows("docs.python.org", 80)
    github = parse_egress("@github")
    assert github.allows("release-assets.githubusercontent.com", 443) and not github.allows("gist.github.com", 443)


# --- addresses ----------------------------------------------------------------------------------------------------

AGENTS = [ipaddress.ip_network("172.30.0.0/16"), ipaddress.ip_network("fd12:3456::/64")]
HOST = [ipaddress.ip_address("192.168.1.10"), ipaddress.ip_address("2001:db8::10")]


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
        ("169.254.169.254", "cloud metadata"), ("169.254.1.1", "link-local"), ("169.254.170.2", "link-local"),
        ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"), ("febf::1", "link-local"),
        ("fd00:ec2::254", "AWS instance metadata"), ("100.100.100.200", "Alibaba"),
        ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
        ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("::ffff:127.0.0.1", "embeds 127.0.0.1: 127.0.0.1 is a loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"), ("::ffff:0.0.0.0", "unspecified"),
        ("::ffff:172.30.0.9", "agents' network 172.30.0.0/16"), ("::ffff:192.168.1.10", "host itself"),
        ("64:ff9b::7f00:1", "loopback"), ("64:ff9b::a9fe:a9fe", "cloud metadata"),
        ("192.168.1.10", "host itself"), ("2001:db8::10", "host itself"),
        ("172.30.0.1", "agents' network"), ("172.30.255.255", "agents' network"),
        ("fd12:3456::5", "agents' network fd12:3456::/64"),
        ("not-an-address", "not an IP address"), ("", "not an IP address"),
    ],
)
def test_refused_addresses(address: str, why: str) -> None:
    reason = refused_address(address, HOST, AGENTS)
    assert reason is not None and why in reason
    if why != "not an IP address":  # an address object reads the same as its text
        assert refused_address(ipaddress.ip_address(address), HOST, AGENTS) == reason


@pytest.mark.parametrize(
    "address",
    ["10.0.0.5", "172.16.0.1", "172.31.0.1", "192.168.1.11", "8.8.8.8", "100.64.0.1", "fd00::1", "2001:db8::11",
     "::ffff:8.8.8.8", "64:ff9b::808:808", "2606:4700::1111", "198.18.0.1"],
)
def test_private_and_public_addresses_are_allowed(address: str) -> None:
    assert refused_address(address, HOST, AGENTS) is None


def test_networks_and_addresses_may_be_given_as_strings() -> None:
    reason = refused_address("10.9.0.3", ["10.1.1.1"], ["10.9.0.0/24"])
    assert reason == "10.9.0.3 is inside the agents' network 10.9.0.0/24"
    assert refused_address("10.1.1.1", ["10.1.1.1"], []) == "10.1.1.1 is an address of the host itself"
    assert refused_address("10.9.0.3") is None  # nothing given: only the fixed rules


def test_a_reason_reads_as_a_sentence_for_events() -> None:
    assert refused_address("169.254.169.254") == "169.254.169.254 is link-local: the cloud metadata service"
    assert refused_address("::ffff:127.0.0.1") == "::ffff:7f00:1 embeds 127.0.0.1: 127.0.0.1 is a loopback address"
