"""Run one probe (``fleetd.health.ProbeSpec``) against an agent container.

``run_probe`` answers True or False and never raises (cancellation aside):
whatever goes wrong - refused, reset, timed out, a bad answer, a broken exec
- is a failed probe. What a result means is ``fleetd.health.ProbeTracker``'s
business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from fleetd import __version__
from fleetd.health import ProbeSpec

log = logging.getLogger(__name__)

# Runs a command in the agent's container and returns its exit code; given the
# probe's timeout, it should return non-zero (124) when the command overruns.
ExecFn = Callable[[tuple[str, ...], float], Awaitable[int]]

USER_AGENT = f"fleetd-probe/{__version__}"
# How long past the probe's timeout an exec_fn may take before we stop waiting:
# creating and starting a docker exec has overhead of its own.
EXEC_SLACK = 1.0


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip


async def run_probe(
    spec: ProbeSpec,
    ip: str,
    exec_fn: ExecFn | None = None,
    session: aiohttp.ClientSession | None = None,
) -> bool:
    """Run ``spec`` once against the container at ``ip``: True on success.

    http: GET without following redirects, any status 200-399 succeeds (as in
    Kubernetes). tcp: a connection opens within the timeout. exec:
    ``exec_fn(command, timeout)`` returns 0 (an exec probe without exec_fn
    fails). ``session`` may be shared between probes; one is made otherwise.
    """
    try:
        if spec.kind == "http":
            return await _http(spec, ip, session)
        if spec.kind == "tcp":
            return await _tcp(spec, ip)
        return await _exec(spec, exec_fn)
    except Exception as exc:  # a probe never raises: any error is a failure
        log.debug("%s probe of %s failed: %r", spec.kind, ip, exc)
        return False


async def _http(spec: ProbeSpec, ip: str, session: aiohttp.ClientSession | None) -> bool:
    url = f"http://{_host(ip)}:{spec.port}{spec.path}"
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"}
    if session is None:
        async with aiohttp.ClientSession(trust_env=False) as own:
            return await _get(own, url, timeout, headers)
    return await _get(session, url, timeout, headers)


async def _get(
    session: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout, headers: dict[str, str]
) -> bool:
    async with session.get(url, timeout=timeout, headers=headers, allow_redirects=False) as response:
        ok = 200 <= response.status < 400
        if not ok:
            log.debug("http probe %s: status %d", url, response.status)
        return ok


async def _tcp(spec: ProbeSpec, ip: str) -> bool:
    assert spec.port is not None  # ProbeSpec guarantees it for tcp
    _reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, spec.port), spec.timeout)
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), spec.timeout)
    return True


async def _exec(spec: ProbeSpec, exec_fn: ExecFn | None) -> bool:
    if exec_fn is None:
        log.warning("exec probe %r without an exec function: failed", spec.command)
        return False
    code = await asyncio.wait_for(exec_fn(spec.command, spec.timeout), spec.timeout + EXEC_SLACK)
    if code != 0:
        log.debug("exec probe %r: exit code %s", spec.command, code)
    return code == 0
