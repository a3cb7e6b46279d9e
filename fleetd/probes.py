"""Run one probe (``fleetd.health.ProbeSpec``) against an agent container.

``probe`` answers with a ``ProbeResult`` and never raises (cancellation
aside): whatever goes wrong - refused, reset, timed out, a bad answer, a
broken exec - is a failed probe, and the result says why in Kubernetes'
words (``HTTP probe failed with statuscode: 500``, ``dial tcp
172.18.0.5:9999: connect: connection refused``, an exec's exit code and
output). ``run_probe`` is the same answer as True or False. What a result
means is ``fleetd.health.ProbeTracker``'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from fleetd import __version__
from fleetd.bounds import clip
from fleetd.health import ProbeSpec

log = logging.getLogger(__name__)

# Runs a command in the agent's container and returns its exit code, or the exit code and
# (the start of) its output; given the probe's timeout, it should return non-zero (124) when
# the command overruns.
ExecFn = Callable[[tuple[str, ...], float], Awaitable[int | tuple[int, bytes]]]
MAX_OUTPUT = 1024  # of an exec probe's output, kept in its failure event (agent-chosen text)

USER_AGENT = f"fleetd-probe/{__version__}"
# How long past the probe's timeout an exec_fn may take before we stop waiting:
# creating and starting a docker exec has overhead of its own.
EXEC_SLACK = 1.0


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome: on failure ``message`` says why and ``data`` has the parts (bounded)."""

    ok: bool
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def _failed(message: str, **data: Any) -> ProbeResult:
    return ProbeResult(False, clip(message, 2 * MAX_OUTPUT), {"error": clip(message, 2 * MAX_OUTPUT), **data})


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip


async def run_probe(
    spec: ProbeSpec,
    ip: str,
    exec_fn: ExecFn | None = None,
    session: aiohttp.ClientSession | None = None,
) -> bool:
    """Run ``spec`` once against the container at ``ip``: True on success (``probe`` says why not)."""
    return (await probe(spec, ip, exec_fn, session)).ok


async def probe(
    spec: ProbeSpec,
    ip: str,
    exec_fn: ExecFn | None = None,
    session: aiohttp.ClientSession | None = None,
) -> ProbeResult:
    """Run ``spec`` once against the container at ``ip``.

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
        return _failed(f"{spec.kind} probe failed: {_why(exc)}")


def _why(exc: BaseException) -> str:
    """An error in a few words, as Go's net package puts it (``connect: connection refused``)."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "i/o timeout"
    os_error = getattr(exc, "os_error", None) if isinstance(exc, aiohttp.ClientConnectorError) else exc
    code = os_error.errno if isinstance(os_error, OSError) else None
    if code is not None and code in errno.errorcode:
        return f"connect: {os.strerror(code).lower()}"
    return str(exc) or type(exc).__name__


async def _http(spec: ProbeSpec, ip: str, session: aiohttp.ClientSession | None) -> ProbeResult:
    url = f"http://{_host(ip)}:{spec.port}{spec.path}"
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"}
    try:
        if session is None:
            async with aiohttp.ClientSession(trust_env=False) as own:
                return await _get(own, url, timeout, headers)
        return await _get(session, url, timeout, headers)
    except (aiohttp.ClientConnectorError, OSError, TimeoutError) as exc:
        where = f"dial tcp {_host(ip)}:{spec.port}: " if not isinstance(exc, TimeoutError) else ""
        why = _why(exc) if where else f"timeout after {spec.timeout:g} s awaiting headers"
        return _failed(f'Get "{url}": {where}{why}')
    except aiohttp.ClientError as exc:
        return _failed(f'Get "{url}": {exc or type(exc).__name__}')


async def _get(
    session: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout, headers: dict[str, str]
) -> ProbeResult:
    async with session.get(url, timeout=timeout, headers=headers, allow_redirects=False) as response:
        if 200 <= response.status < 400:
            return ProbeResult(True)
        log.debug("http probe %s: status %d", url, response.status)
        return _failed(f"HTTP probe failed with statuscode: {response.status}", status_code=response.status)


async def _tcp(spec: ProbeSpec, ip: str) -> ProbeResult:
    assert spec.port is not None  # ProbeSpec guarantees it for tcp
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, spec.port), spec.timeout)
    except (OSError, TimeoutError) as exc:
        return _failed(f"dial tcp {_host(ip)}:{spec.port}: {_why(exc)}")
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), spec.timeout)
    return ProbeResult(True)


async def _exec(spec: ProbeSpec, exec_fn: ExecFn | None) -> ProbeResult:
    if exec_fn is None:
        log.warning("exec probe %r without an exec function: failed", spec.command)
        return _failed("exec probe failed: no way to run a command in the container")
    try:
        result = await asyncio.wait_for(exec_fn(spec.command, spec.timeout), spec.timeout + EXEC_SLACK)
    except TimeoutError:
        return _failed(f"command timed out after {spec.timeout:g} s", exit_code=None)
    code, output = result if isinstance(result, tuple) else (result, b"")
    if code == 0:
        return ProbeResult(True)
    log.debug("exec probe %r: exit code %s", spec.command, code)
    text = output[:MAX_OUTPUT].decode(errors="replace") + ("…" if len(output) > MAX_OUTPUT else "")
    why = f"command timed out after {spec.timeout:g} s" if code == 124 else f"command exited with code {code}"
    return _failed(why + (f": {text.strip()}" if text.strip() else ""), exit_code=code, output=text)
