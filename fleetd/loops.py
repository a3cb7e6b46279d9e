"""Which event loop a long-running process of fleetd runs on: uvloop's (libuv) when it is installed, asyncio's own
otherwise. The daemon and zone 2 answer many small requests (agents' calls, their task queue's long polls and
answers, a submit per task): libuv's loop costs less per request (bench/README.md, fleet.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], who: str) -> T:
    """``asyncio.run(main)`` on uvloop when it is installed; ``who`` names the process in the warning otherwise."""
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed: %s runs on asyncio's own loop", who)
        return asyncio.run(main)
    return uvloop.run(main)
