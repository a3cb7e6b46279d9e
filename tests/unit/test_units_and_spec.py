from __future__ import annotations

import pytest

from fleetd.config import Config, Limits
from fleetd.errors import InvalidRequest
from fleetd.spec import build_spec
from fleetd.units import parse_cpus, parse_disk, parse_memory, parse_pairs


@pytest.mark.parametrize(
    ("text", "size"),
    [("512m", 512 << 20), ("1g", 1 << 30), ("1G", 1 << 30), ("6m", 6 << 20), ("64MiB", 64 << 20),
     ("10mb", 10 << 20), ("1.5g", int(1.5 * (1 << 30))), ("7000000", 7000000), (8 << 20, 8 << 20)],
)
def test_memory_sizes_read_like_docker(text: str | int, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["banana", "", "-5m", "12q", "m", "1 2m"])
def test_bad_memory_sizes(text: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid size"):
        parse_memory(text)


def test_memory_below_docker_minimum() -> None:
    with pytest.raises(InvalidRequest, match="6 MiB"):
        parse_memory("5m")


def test_disk_sizes() -> None:
    assert parse_disk("1g") == 1 << 30 and parse_disk("16m") == 16 << 20 and parse_disk(64 << 20) == 64 << 20
    for bad in ("15m", "2t", "0"):
        with pytest.raises(InvalidRequest, match="between 16m and 1t"):
            parse_disk(bad)
    with pytest.raises(InvalidRequest, match="invalid size"):
        parse_disk("lots")


def test_cpus() -> None:
    assert parse_cpus("0.25", 2) == 250_000_000
    assert parse_cpus(2, 2) == 2_000_000_000
    for bad in ("0", "-1", "nan", "x"):
        with pytest.raises(InvalidRequest):
            parse_cpus(bad, 2)
    with pytest.raises(InvalidRequest, match="more than the 2 CPUs"):
        parse_cpus("2.5", 2)


def test_pairs() -> None:
    assert parse_pairs(["A=1", "B=", "C=x=y"], "env") == {"A": "1", "B": "", "C": "x=y"}
    for bad in (["A"], ["=1"], ["A B=1"], "A=1", [1]):
        with pytest.raises(InvalidRequest):
            parse_pairs(bad, "env")


CONFIG = Config(roles={"big": Limits(memory=1 << 30, ttl=7200, disk=4 << 30)})


def test_spec_defaults_and_roles() -> None:
    plain = build_spec({"image": "img"}, CONFIG, 2)
    assert (plain.memory, plain.pids_limit, plain.ttl, plain.grace, plain.nano_cpus) == (
        512 << 20, 256, 3600, 30, 1_000_000_000)
    big = build_spec({"image": "img", "role": "big", "ttl": 60}, CONFIG, 2)
    assert big.memory == 1 << 30 and big.ttl == 60 and big.role == "big"
    assert build_spec({"image": "img", "role": "big"}, CONFIG, 2).ttl == 7200
    assert (plain.disk, big.disk) == (1 << 30, 4 << 30)  # 1g unless the role or the spawn says otherwise
    assert build_spec({"image": "img", "role": "big", "disk": "64m"}, CONFIG, 2).disk == 64 << 20


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({}, "an image is required"),
        ({"image": "i", "ttl": 0}, "at least 1"),
        ({"image": "i", "ttl": 86401}, "at most 86400"),
        ({"image": "i", "ttl": "--5"}, "invalid duration"),
        ({"image": "i", "ttl": True}, "invalid duration"),
        ({"image": "i", "grace": 3601}, "at most 3600"),
        ({"image": "i", "name": "-x"}, "invalid name"),
        ({"image": "i", "role": "none"}, "unknown role"),
        ({"image": "i", "env": ["FLEETD_X=1"]}, "reserved"),
        ({"image": "i", "labels": ["fleetd.kind=x"]}, "reserved"),
        ({"image": "i", "command": "sh"}, "list of strings"),
        ({"image": "i", "x": 1}, "unknown spawn fields"),
        ({"image": "i", "memory": "64m", "memory_reservation": "128m"}, "smaller than --memory"),
        ([], "JSON object"),
    ],
)
def test_spec_refuses(request_: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        build_spec(request_, CONFIG, 2)


def test_one_money_format_everywhere() -> None:
    from fleetd.units import format_usd

    assert [format_usd(v) for v in (None, 0, 0.00001, 0.000123, 0.0123, 1.25, 50, 1234.56789)] == [
        "-", "$0.0000", "<$0.0001", "$0.0001", "$0.0123", "$1.2500", "$50.0000", "$1,234.5679"]


def test_a_whole_number_given_as_thousands_of_digits_is_a_clear_400() -> None:
    """A 5,000-digit string for --pids-limit reached int(), which Python refuses past 4,300 digits: a ValueError,
    answered 500."""
    from fleetd.errors import InvalidRequest
    from fleetd.spec import whole_number

    with pytest.raises(InvalidRequest, match="--pids-limit: expected a whole number"):
        whole_number("9" * 5000, "--pids-limit", 1)
    assert whole_number(" 42 ", "--pids-limit", 1) == 42
