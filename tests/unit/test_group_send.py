"""GroupSend (fleetd.zone2.group_send): calls that come together go as one, the first at once."""

from __future__ import annotations

import asyncio

import pytest

from fleetd.zone2.group_send import GroupSend


class Daemon:
    """A send that records each group and answers when the test lets it."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def send(self, items: list[int]) -> list[int]:
        self.groups.append(items)
        await self.gate.wait()
        if self.fail is not None:
            fail, self.fail = self.fail, None  # once
            raise fail
        return [item * 10 for item in items]


def test_the_first_goes_at_once_and_those_behind_it_together_at_most_most() -> None:
    async def check() -> None:
        daemon = Daemon()
        group = GroupSend(daemon.send, most=3)
        calls = [asyncio.ensure_future(group(1))]
        await asyncio.sleep(0.01)
        assert daemon.groups == [[1]]
        calls += [asyncio.ensure_future(group(n)) for n in range(2, 7)]
        await asyncio.sleep(0.01)
        assert daemon.groups == [[1]], "the others wait for the group on its way"
        daemon.gate.set()
        assert await asyncio.gather(*calls) == [10, 20, 30, 40, 50, 60]
        assert daemon.groups == [[1], [2, 3, 4], [5, 6]]
        await group.close()

    asyncio.run(check())


def test_what_the_send_raises_each_caller_of_its_group_raises_and_the_next_group_goes() -> None:
    async def check() -> None:
        daemon = Daemon()
        group = GroupSend(daemon.send, most=10)
        first = asyncio.ensure_future(group(1))
        await asyncio.sleep(0.01)
        behind = [asyncio.ensure_future(group(n)) for n in (2, 3)]
        await asyncio.sleep(0.01)
        daemon.fail = ConnectionError("daemon down")
        daemon.gate.set()
        with pytest.raises(ConnectionError):
            await first
        assert await asyncio.gather(*behind) == [20, 30]

    asyncio.run(check())


def test_a_caller_that_stops_waiting_still_sends_its_item() -> None:
    async def check() -> None:
        daemon = Daemon()
        group = GroupSend(daemon.send, most=10)
        first = asyncio.ensure_future(group(1))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(group(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        daemon.gate.set()
        assert await first == 10
        await group.close()
        assert daemon.groups == [[1], [2]]  # the answer it relayed is recorded, whoever reads the outcome

    asyncio.run(check())


def test_a_send_that_answers_the_wrong_number_fails_its_callers() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:1]

    async def check() -> None:
        group = GroupSend(short, most=10)
        calls = [asyncio.ensure_future(group(n)) for n in (1, 2, 3)]
        assert await calls[0] == 1
        with pytest.raises(ValueError, match="1 results for 2 calls"):
            await calls[1]
        with pytest.raises(ValueError):
            await calls[2]

    asyncio.run(check())


def test_an_exception_as_a_result_is_raised_by_that_caller_alone() -> None:
    async def some_refused(items: list[int]) -> list[int | Exception]:
        return [LookupError(f"no {item}") if item % 2 else item for item in items]

    async def check() -> None:
        group = GroupSend(some_refused, most=10)
        calls = [asyncio.ensure_future(group(n)) for n in (2, 3, 4)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert results[0] == 2 and results[2] == 4
        assert isinstance(results[1], LookupError)

    asyncio.run(check())
