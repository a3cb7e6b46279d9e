"""Each agent's share of zone 2 (fleetd.zone2.shares): pure decisions, exact boundaries."""

from __future__ import annotations

from fleetd.zone2.shares import Limits, Shares

LIMITS = Limits(connections_per_agent=4, connections=10, bytes_per_agent=100, bytes=200, small=10,
                small_reserve=50)


def test_an_agent_gets_connections_up_to_its_cap_and_back_when_it_closes_them() -> None:
    shares = Shares(LIMITS)
    assert [shares.open("a") for _ in range(5)] == [True, True, True, True, False]
    shares.close("a")
    assert shares.open("a") and not shares.open("a")
    assert shares.open("b")  # another agent is not affected
    for _ in range(4):
        shares.close("a")
    shares.close("a")  # more closes than opens change nothing
    assert shares.connections == {"b": 1} and shares.total_connections == 1


def test_when_connections_run_short_each_address_keeps_its_fair_share() -> None:
    shares = Shares(LIMITS)
    for ip in ("a", "b"):
        for _ in range(4):
            assert shares.open(ip)
    assert shares.open("c") and shares.open("c")
    assert shares.total_connections == 10
    assert not shares.open("a")  # over its cap anyway
    assert shares.open("c")  # the whole is spent, but c holds 2, below its fair share of 10 // 3
    assert not shares.open("c")  # now it holds its share
    shares.close("b")
    shares.close("b")
    assert shares.total_connections == 9 and shares.open("c")  # room again


def test_a_newcomer_gets_a_connection_while_the_hoarders_hold_the_whole() -> None:
    shares = Shares(Limits(connections_per_agent=8, connections=16))
    for ip in ("a", "b"):
        for _ in range(8):
            assert shares.open(ip)
    assert shares.total_connections == 16
    assert shares.open("c")  # fair share of 16 among three: 5; it holds none
    assert not shares.open("a")


def test_bytes_within_the_agents_cap_and_the_whole() -> None:
    shares = Shares(LIMITS)
    assert shares.take("a", 100) and not shares.take("a", 1)
    assert shares.take("b", 100)
    assert shares.total_held == 200
    # the whole is spent: a small take still fits (out of the reserve), a large one only within the fair share
    assert shares.take("c", 10)
    assert shares.take("c", 40)  # c holds 50 <= 200 // 3
    assert not shares.take("c", 30)  # 80 > its fair share of 66
    assert shares.total_held == 250 and not shares.take("d", 1)  # the reserve is spent too: the hard bound
    shares.give("a", 60)
    assert shares.take("d", 20)
    shares.give("c", 1000)  # more than it holds: all of it
    assert shares.held == {"a": 40, "b": 100, "d": 20} and shares.total_held == 160
    assert shares.take("x", 0) and shares.take("x", -5) and "x" not in shares.held
