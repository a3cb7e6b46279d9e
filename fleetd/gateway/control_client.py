"""The daemon's client of zone 2's control socket (``zone2.sock``): each call sends or reads one message of the
daemon <-> zone 2 contract (``fleetd.zone2.contract``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from fleetd.errors import RuntimeFailure
from fleetd.zone2.contract import (
    BudgetAnswer,
    ContractError,
    Credentials,
    Health,
    Message,
    Registration,
    Registrations,
    Zone2Policy,
)

log = logging.getLogger(__name__)
Answer = TypeVar("Answer", bound=Message)
TIMEOUT = 5.0
STALE_IMAGE_HINT = ("When its image was built from other fleetd code than this daemon runs (an upgrade without a "
                    "rebuild), run `fleetd images build`, then restart the daemon.")


class ControlClient:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._session: aiohttp.ClientSession | None = None
        self.last_health: Health | None = None  # zone 2's last answer to a health check

    def open(self, path: Path | None = None) -> None:
        """Talk to the socket at ``path`` (the one given at construction by default) from now on."""
        self.path = path or self.path
        self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.path)),
                                              timeout=aiohttp.ClientTimeout(total=TIMEOUT))

    @property
    def opened(self) -> bool:
        return self._session is not None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, message: Message | None = None
                      ) -> tuple[int | None, dict[str, Any] | None]:
        """(status, JSON object) of a control call; (None, None) when zone 2 does not answer, or before ``open``
        (what would have been said then is sent again when zone 2 is up: ``Zone2.push_all``)."""
        if self._session is None:
            return None, None
        body = None if message is None else message.to_json()
        try:
            async with self._session.request(method, f"http://zone2{path}", json=body) as response:
                try:
                    result = await response.json()
                except (aiohttp.ContentTypeError, ValueError):
                    result = None
                return response.status, result if isinstance(result, dict) else None
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None, None

    async def ask(self, path: str, answer: type[Answer]) -> Answer | None:
        """Zone 2's answer to GET ``path``, read as ``answer``; None when it does not answer 200 with one (an answer
        this daemon cannot read is logged: zone 2 runs other fleetd code)."""
        status, result = await self.request("GET", path)
        if status != 200:
            return None
        try:
            return answer.from_json(result)
        except ContractError as exc:
            log.warning("zone 2's answer to %s cannot be read (%s). %s", path, exc, STALE_IMAGE_HINT)
            return None

    async def health(self) -> Health | None:
        result = await self.ask("/control/health", Health)
        if result is not None:
            self.last_health = result
        return result

    async def put_policy(self, policy: Zone2Policy) -> None:
        """Prices, breaker and retry settings and the instance caps. A zone 2 that refuses them (one built from
        older code, which does not know a field) would meter nothing right: that is an error, not a warning."""
        status, result = await self.request("PUT", "/control/policy", policy)
        if status == 400:
            raise RuntimeFailure(f"zone 2 refused the price table and budget policy ({(result or {}).get('error')}). "
                                 f"{STALE_IMAGE_HINT}")

    async def put_creds(self, creds: Credentials) -> None:
        await self.request("PUT", "/control/creds", creds)

    async def put_agents(self, regs: Registrations) -> None:
        await self.request("PUT", "/control/agents", regs)

    async def post_agent(self, reg: Registration) -> None:
        await self.request("POST", "/control/agents", reg)

    async def delete_agent(self, agent_id: str) -> None:
        await self.request("DELETE", f"/control/agents/{agent_id}")

    async def budget(self, agent_ids: list[str]) -> BudgetAnswer | None:
        """Spend, reservations and calls as zone 2 counts them (None when zone 2 does not answer)."""
        query = "&".join(f"agent={agent_id}" for agent_id in agent_ids)
        return await self.ask(f"/control/budget?{query}", BudgetAnswer)
