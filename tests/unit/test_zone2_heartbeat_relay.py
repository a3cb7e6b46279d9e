"""Zone 2 relays heartbeats to the daemon in groups (fleetd.zone2.service.DaemonLink), against a daemon socket the
test serves."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from fleetd.zone2.service import HEARTBEAT_LINGER, DaemonLink


def test_a_beat_is_answered_in_about_the_linger_and_beats_sent_meanwhile_go_together() -> None:
    batches: list[list[str]] = []

    async def heartbeats(request: web.Request) -> web.Response:
        body: list[dict[str, Any]] = await request.json()
        batches.append([b["agent_id"] for b in body])
        await asyncio.sleep(0.2)  # a slow daemon: beats arriving meanwhile wait for this batch
        return web.json_response({"taken": [b["agent_id"] for b in body if b["agent_id"] != "unknown"]})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/control/heartbeats", heartbeats)
        runner = web.AppRunner(app)
        await runner.setup()
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            path = Path(tmp) / "daemon.sock"
            await web.UnixSite(runner, str(path)).start()
            link = DaemonLink(path)
            try:
                start = time.monotonic()
                assert await link.heartbeat("a1", None) is True
                alone = time.monotonic() - start
                assert HEARTBEAT_LINGER <= alone < HEARTBEAT_LINGER + 0.2 + 0.15  # the linger, then one request
                first = asyncio.ensure_future(link.heartbeat("a1", {"step": 1}))
                await asyncio.sleep(HEARTBEAT_LINGER + 0.05)  # its batch is on its way
                rest = [asyncio.ensure_future(link.heartbeat(agent, None)) for agent in ("a2", "a3", "unknown")]
                assert await first is True
                assert await asyncio.gather(*rest) == [True, True, False]
                assert batches == [["a1"], ["a1"], ["a2", "a3", "unknown"]]
            finally:
                await link.close()
                await runner.cleanup()

    asyncio.run(main())
