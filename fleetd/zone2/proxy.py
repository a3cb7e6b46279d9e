"""The agent-facing side of zone 2: resolve handles, forward to the one upstream, stream back.

A secret is only ever sent to the upstream its credential is bound to: the
request target must be a plain path, handles bound to different upstreams in
one request are refused, redirects are never followed, and any echo of a
secret in the response is redacted, also mid-stream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from fleetd.zone2.handles import (
    HOP_BY_HOP,
    BadHandle,
    Redactor,
    request_handles,
    safe_path,
    substitute,
    substitute_query,
)
from fleetd.zone2.registry import Registration, Registry

log = logging.getLogger("fleetd.zone2")
MAX_BODY = 10 << 20
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 300.0
DROPPED_PREFIXES = ("x-forwarded-", "forwarded", "x-real-ip", "proxy-")
Whois = Callable[[str], Awaitable[Registration | None]]
REGISTRY = web.AppKey("registry", Registry)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"type": code, "code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)


def forward_headers(headers: Any, secrets: dict[str, str]) -> dict[str, str]:
    """The request headers to send upstream: hop-by-hop and forwarding headers dropped, handles swapped."""
    connection_listed = {h.strip().lower() for h in headers.get("Connection", "").split(",") if h.strip()}
    out: dict[str, str] = {}
    for key, value in headers.items():
        lower = key.lower()
        if lower in HOP_BY_HOP or lower in connection_listed or lower.startswith(DROPPED_PREFIXES):
            continue
        out[key] = substitute(value, secrets)
    out["Accept-Encoding"] = "identity"  # redaction needs the plain bytes
    return out


def response_headers(headers: Any, redactor: Redactor) -> list[tuple[str, str]]:
    out = []
    for key, value in headers.items():
        lower = key.lower()
        if lower in HOP_BY_HOP or lower == "content-encoding":
            continue
        out.append((key, redactor._scrub(value.encode()).decode(errors="replace")))
    return out


class Gateway:
    """Handles every request an agent makes to zone 2."""

    def __init__(self, registry: Registry, whois: Whois, session: aiohttp.ClientSession) -> None:
        self.registry = registry
        self.whois = whois
        self.session = session

    async def identify(self, request: web.Request) -> Registration | None:
        ip = request.remote or ""
        reg = self.registry.by_ip.get(ip)
        if reg is None:
            # Registration may trail the agent's first call by a moment: ask the daemon.
            reg = await self.whois(ip)
            if reg is not None:
                self.registry.register(reg)
        return reg

    async def handle(self, request: web.Request) -> web.StreamResponse:
        reg = await self.identify(request)
        if reg is None:
            return error(403, "unknown_agent", "this address is not a fleetd agent")
        try:
            path, query = safe_path(request.raw_path)
            names = request_handles(request.headers.items(), query)
        except BadHandle as exc:
            return error(400, "bad_request", str(exc))
        if not names:
            return error(400, "no_credential", "name a credential with $CRED{name} in a header or the query")
        creds = self.registry.resolve(reg, names)
        if creds is None:
            return error(403, "forbidden", "credential not available to this agent")
        upstreams = {c.upstream for c in creds}
        if len(upstreams) != 1:
            return error(403, "forbidden", "credentials bound to different upstreams in one request")
        secrets = {c.name: c.secret for c in creds}
        url = upstreams.pop() + path + ("?" + substitute_query(query, secrets) if query else "")
        if (request.content_length or 0) > MAX_BODY:
            return error(413, "request_too_large", f"request bodies are limited to {MAX_BODY >> 20} MiB")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error(413, "request_too_large", f"request bodies are limited to {MAX_BODY >> 20} MiB")
        redactor = Redactor(secrets.values())
        try:
            upstream = await self.session.request(
                request.method, url, headers=forward_headers(request.headers, secrets), data=body or None,
                allow_redirects=False, auto_decompress=False,
            )
        except TimeoutError:
            return error(504, "upstream_timeout", "the upstream did not answer in time")
        except aiohttp.ClientError as exc:
            return error(502, "upstream_unreachable", f"cannot reach the upstream: {type(exc).__name__}")
        # Per request at debug only: an INFO line each was a quarter of zone 2's CPU under load.
        log.debug("%s %s %s -> %s", reg.agent_id, request.method, path, upstream.status)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in response_headers(upstream.headers, redactor):
            response.headers.add(key, value)
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                out = redactor.feed(chunk)
                if out:
                    await response.write(out)
            tail = redactor.flush()
            if tail:
                await response.write(tail)
            await response.write_eof()
        except (aiohttp.ClientError, TimeoutError, ConnectionResetError):
            pass  # upstream or agent went away mid-stream: nothing more to send
        finally:
            upstream.release()
        return response


def init_gateway(registry: Registry, whois: Whois) -> web.Application:
    """The agent-facing aiohttp application."""
    @web.middleware
    async def targets(request: web.Request, handler: Any) -> web.StreamResponse:
        # Authority-form (CONNECT host:port) and the like never reach a route: refuse them the same way.
        if not request.raw_path.startswith("/"):
            return error(400, "bad_request", "the request target must be a path starting with a single /")
        result: web.StreamResponse = await handler(request)
        return result

    app = web.Application(client_max_size=MAX_BODY, middlewares=[targets])

    async def open_session(app: web.Application) -> Any:
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=IDLE_TIMEOUT)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60)
        app[SESSION] = aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False)
        app[REGISTRY] = registry
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(open_session)

    async def handle(request: web.Request) -> web.StreamResponse:
        return await Gateway(registry, whois, request.app[SESSION]).handle(request)

    app.router.add_route("*", "/{tail:.*}", handle)
    return app
