"""The agent-facing side of zone 2: resolve handles, forward to the one upstream, stream back.

A secret is only ever sent to the upstream its credential is bound to: the
request target must be a plain path, handles bound to different upstreams in
one request are refused, redirects are never followed, and any echo of a
secret in the response is redacted, also mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from fleetd.zone2.breaker import Reject, parse_retry_after, retry_delay
from fleetd.zone2.budget import Refusal
from fleetd.zone2.contract import Registration
from fleetd.zone2.costs import CostTracker, LedgerDown, NotPriced
from fleetd.zone2.errors import UpstreamFailed, Zone2Error
from fleetd.zone2.guard import GUARD, LARGE_BODY, Guard, guard_middleware, in_time, read_body
from fleetd.zone2.handles import (
    HOP_BY_HOP,
    BadHandle,
    Redactor,
    request_handles,
    substitute,
    substitute_query,
)
from fleetd.zone2.kinds import free_call, is_llm, unmetered_billable
from fleetd.zone2.ledger import Ledger
from fleetd.zone2.llm import HEAVY_CONTAINERS, PARSE_BUDGET, BadLLMRequest, JsonShape, Usage, parse_cost
from fleetd.zone2.meters import MAX_BUFFERED, BodyMeter, StreamMeter, usage_from_body
from fleetd.zone2.providers import Provider, match
from fleetd.zone2.registry import Registry
from fleetd.zone2.targets import safe_path
from fleetd.zone2.tasks import HeldTasks, TaskLink, TaskRoutes
from fleetd.zone2.upstream import BadRequestHead, Response, UpstreamError, Upstreams

log = logging.getLogger("fleetd.zone2")
MAX_BODY = 10 << 20
MAX_HEARTBEAT = 64 << 10  # a heartbeat's progress is a few fields: checked before a byte is read
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 300.0
DROPPED_PREFIXES = ("x-forwarded-", "forwarded", "x-real-ip", "proxy-")
# A method other than the one zone 2 classified (Google's front ends, among others, honour these): the call is sent
# with the method it was metered as, or not at all.
METHOD_OVERRIDES = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
# Zone 2 asks upstreams for identity bodies (it must read them to redact secrets and find usage). One that compresses
# anyway is decoded when it can be (gzip, deflate); any other encoding is refused with a 502, never passed on.
READABLE_ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})
Whois = Callable[[str], Awaitable[Registration | None]]
REGISTRY = web.AppKey("registry", Registry)
UPSTREAMS = web.AppKey("upstreams", Upstreams)
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
TASKS = web.AppKey("tasks", HeldTasks)  # the task each agent holds (zone2.tasks)


def forward_headers(headers: Any, secrets: dict[str, str]) -> dict[str, str]:
    """The request headers to send upstream: hop-by-hop and forwarding headers dropped, handles swapped."""
    connection_listed = {h.strip().lower() for h in headers.get("Connection", "").split(",") if h.strip()}
    out: dict[str, str] = {}
    for key, value in headers.items():
        lower = key.lower()
        if (lower in HOP_BY_HOP or lower in connection_listed or lower.startswith(DROPPED_PREFIXES)
                or lower in METHOD_OVERRIDES):
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
        out.append((key, redactor.scrub_text(value)))
    return out


class Gateway:
    """Handles every request an agent makes to zone 2."""

    def __init__(self, registry: Registry, whois: Whois, upstreams: Upstreams, costs: CostTracker,
                 guard: Guard) -> None:
        self.registry = registry
        self.whois = whois
        self.upstreams = upstreams
        self.costs = costs
        self.guard = guard

    async def identify(self, request: web.Request) -> Registration | None:
        ip = request.remote or ""
        reg = self.registry.by_ip.get(ip)
        if reg is None:
            # Registration may trail the agent's first call by a moment: ask the daemon.
            reg = await self.whois(ip)
            if reg is not None:
                self.registry.register(reg)
                request.app[TASKS].learn(reg)
        return reg

    async def handle(self, request: web.Request) -> web.StreamResponse:
        reg = await self.identify(request)
        if reg is None:
            raise Zone2Error(403, "unknown_agent", "this address is not a fleetd agent")
        try:
            path, query = safe_path(request.raw_path)
            names = request_handles(request.headers.items(), query)
        except BadHandle as exc:
            raise Zone2Error(400, "bad_request", str(exc)) from None
        if not names:
            raise Zone2Error(400, "no_credential", "name a credential with $CRED{name} in a header or the query")
        creds = self.registry.resolve(reg, names)
        if creds is None:
            raise Zone2Error(403, "forbidden", "credential not available to this agent")
        upstreams = {c.upstream for c in creds}
        if len(upstreams) != 1:
            raise Zone2Error(403, "forbidden", "credentials bound to different upstreams in one request")
        base = upstreams.pop()
        llm_provider = any(is_llm(c.kind) for c in creds)  # the strictest kind named
        secrets = {c.name: c.secret for c in creds}
        url = base + path + ("?" + substitute_query(query, secrets) if query else "")
        shape = JsonShape()
        body = await read_body(request, MAX_BODY, feed=shape.feed)
        call = Upcall(request.method, url, forward_headers(request.headers, secrets), body, base,
                      Redactor.for_secrets(secrets.values()))
        matched = match(request.method, path)
        if matched is None:
            unmeterable = ((llm_provider and not free_call(request.method, path))
                           or unmetered_billable(request.method, path))
            if unmeterable and not reg.allow_unpriced:
                raise Zone2Error(400, "endpoint_not_metered", "zone 2 cannot meter the cost of this call against the "
                             "agent's budget: a role with --allow-unpriced lets it through unmetered")
            return await self.plain(request, reg, call)
        if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            raise Zone2Error(400, "bad_request", "zone 2 meters what it reads: send an LLM call's body uncompressed "
                         "(without Content-Encoding)")
        heavy = len(body) >= LARGE_BODY or shape.containers > HEAVY_CONTAINERS
        if heavy:  # reading it is done; parsing it takes the same turn (one agent, one heavy body at a time)
            await self.guard.one_large_body(request)
        if parse_cost(body, shape.counts) > PARSE_BUDGET:  # counted as it arrived: no pass over it here
            raise Zone2Error(400, "invalid_request_error", f"request body has too many JSON values to meter (parsing "
                         f"it would take more than {PARSE_BUDGET >> 20} MiB): send fewer, larger ones")
        provider, segments = matched
        return await self.metered(request, reg, call, provider, segments, ",".join(sorted(secrets)), heavy)

    async def plain(self, request: web.Request, reg: Registration, call: Upcall) -> web.StreamResponse:
        """A generic (tool API) call: proxied without metering, guarded by the breaker."""
        admission = self.costs.breaker_admit(reg.agent_id, call.base)
        if isinstance(admission, Reject):
            raise circuit_open(admission)
        try:
            upstream = await self.send(call, call.body)
        except UpstreamFailed:
            self.costs.breaker_record(reg.agent_id, call.base, None, admission.probe)
            raise
        self.costs.breaker_record(reg.agent_id, call.base, upstream.status, admission.probe)
        # The target without its query: a handle in the query has become the secret there.
        log.debug("%s %s %s -> %s", reg.agent_id, request.method, call.url.split("?", 1)[0], upstream.status)
        try:
            if self.fits_buffer(request, upstream):
                return await buffered(upstream, call.redactor)
            return await relay_stream(request, upstream, call.redactor, None)
        finally:
            upstream.release()

    async def metered(self, request: web.Request, reg: Registration, call: Upcall, provider: Provider,
                      segments: list[str], credential: str, heavy: bool = False) -> web.StreamResponse:
        """An LLM call: admitted against the budget, retried per policy, settled with its real usage.

        A heavy body (large, or of many JSON objects: the adapters walk them in Python) is parsed in a thread,
        which the interpreter switches away from every few milliseconds: the other agents' requests go on."""
        try:
            if heavy:
                llm = await asyncio.to_thread(provider.parse, call.body, segments)
            else:
                llm = provider.parse(call.body, segments)
        except BadLLMRequest as exc:
            raise Zone2Error(400, "invalid_request_error", str(exc)) from None
        if llm.server_tools and not reg.allow_unpriced:
            raise Zone2Error(400, "tool_not_metered",
                         f"zone 2 cannot meter server-side tools ({', '.join(llm.server_tools)}) against the agent's "
                         "budget: the provider bills each use on top of the tokens, and feeds what they return to the "
                         "model over several turns. A role with --allow-unpriced lets them through, metered for the "
                         "tokens only")
        if llm.model_fallbacks and not reg.allow_unpriced:
            raise Zone2Error(400, "fallbacks_not_metered",
                         "zone 2 cannot meter a call that may run again on other models (fallbacks): each attempt is "
                         "billed at its own model's prices, on models the API may choose. A role with "
                         "--allow-unpriced lets it through, metered at the requested model's prices")
        task = request.app[TASKS].held(reg.agent_id)  # its calls are the task's: attributed, and capped by it
        ticket = (self.costs.admit(reg, credential, llm) if task is None
                  else self.costs.admit(reg, credential, llm, task.task_id, task.max_nusd))
        if isinstance(ticket, LedgerDown):
            raise Zone2Error(503, "ledger_unavailable", f"zone 2 cannot record calls ({ticket.error}): "
                         "no metered call is made until it can", {"Retry-After": str(ticket.retry_after)})
        if isinstance(ticket, NotPriced):
            raise Zone2Error(400, "model_not_priced", ticket.message)
        if isinstance(ticket, Refusal):
            headers = {"x-should-retry": "false"}
            if ticket.retry_after is not None:
                headers["Retry-After"] = str(ticket.retry_after)
            raise Zone2Error(429, ticket.type, ticket.message, headers)
        status: int | None = None
        usage: Usage | None = None
        attempts = 0
        unanswered = False
        try:
            outcome = await self.send_with_retries(reg, call, llm.body)
            attempts, unanswered = outcome.attempts, outcome.unanswered
            if outcome.error is not None:
                raise outcome.error
            upstream = outcome.upstream
            assert upstream is not None
            status = upstream.status
            try:
                if self.fits_buffer(request, upstream):
                    whole = await buffered(upstream, call.redactor)
                    usage = usage_from_body(provider, whole.raw)
                    return whole
                meter: StreamMeter | BodyMeter = (StreamMeter(provider, llm.usage_injected)
                                                  if upstream.content_type == "text/event-stream"
                                                  else BodyMeter(provider, lambda n: self.guard.take(request, n)))
                streamed = await relay_stream(request, upstream, call.redactor, meter)
                usage = meter.usage
                return streamed
            finally:
                upstream.release()
        finally:
            # Exactly once, whatever happened above (also when the agent went away).
            self.costs.settle(ticket, status, usage, attempts, unanswered)

    def fits_buffer(self, request: web.Request, upstream: Response) -> bool:
        """Read the answer whole when it may be (``fits_buffer``) and the agent's share of memory holds it; else it
        streams through, holding next to nothing."""
        return fits_buffer(upstream) and self.guard.take(request, int(upstream.headers["Content-Length"]))

    async def send(self, call: Upcall, body: bytes) -> Response:
        """One attempt upstream; redirects are answers like any other (never followed)."""
        try:
            response = await self.upstreams.request(call.method, call.url, call.headers, body)
        except BadRequestHead as exc:
            raise UpstreamFailed(400, "bad_request", str(exc)) from None
        except UpstreamError as exc:
            if exc.kind == "timeout":
                raise UpstreamFailed(504, "upstream_timeout", "the upstream did not answer in time",
                                     exc.sent) from None
            raise UpstreamFailed(502, "upstream_unreachable", str(exc), exc.sent) from None
        encoding = content_encoding(response)
        if encoding not in READABLE_ENCODINGS:
            response.release()
            raise unreadable(encoding)
        return response

    async def send_with_retries(self, reg: Registration, call: Upcall, body: bytes) -> Outcome:
        """Attempts under the breaker; 429 and 5xx retried with full jitter, honouring Retry-After."""
        attempt = 0
        while True:
            admission = self.costs.breaker_admit(reg.agent_id, call.base)
            if isinstance(admission, Reject):
                return Outcome(circuit_open(admission), None, attempt)
            try:
                upstream = await self.send(call, body)
            except UpstreamFailed as exc:
                self.costs.breaker_record(reg.agent_id, call.base, None, admission.probe)
                return Outcome(exc, None, attempt + 1, exc.sent)
            self.costs.breaker_record(reg.agent_id, call.base, upstream.status, admission.probe)
            delay = retry_delay(self.costs.retry, attempt, upstream.status, upstream_retry_after(upstream.headers))
            if delay is None:
                return Outcome(None, upstream, attempt + 1)
            log.debug("%s: upstream answered %s, retrying in %.2f s", reg.agent_id, upstream.status, delay)
            upstream.release()
            await asyncio.sleep(delay)
            attempt += 1


@dataclass(frozen=True)
class Upcall:
    """What goes upstream: method, target, headers with secrets in, the body, and the redactor for the answer."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    base: str
    redactor: Redactor


@dataclass(frozen=True)
class Outcome:
    error: Zone2Error | None  # zone 2's own answer (breaker open, upstream unreachable)
    upstream: Response | None
    attempts: int
    unanswered: bool = False  # the last attempt went out and no answer came (a timeout, a cut connection)


class Buffered(web.Response):
    raw: bytes = b""


def circuit_open(reject: Reject) -> Zone2Error:
    """Fail fast: ``x-should-retry: false`` stops the official SDKs from sleeping on the 503 and retrying it (they
    honour a Retry-After up to 60 s otherwise), so the agent can queue or escalate at once; Retry-After stays as
    information."""
    return Zone2Error(503, "circuit_open", "the upstream is failing with 429s: this agent's calls to it fail fast "
                 f"for {reject.retry_after} s", {"Retry-After": str(reject.retry_after), "x-should-retry": "false"})


def upstream_retry_after(headers: Any) -> float | None:
    """The upstream's Retry-After (OpenAI also sends retry-after-ms, which is finer)."""
    ms = parse_retry_after(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    return parse_retry_after(headers.get("Retry-After"))


def unreadable(encoding: str) -> UpstreamFailed:
    return UpstreamFailed(502, "upstream_encoding", f"the upstream answered in Content-Encoding {encoding[:60]!r}, "
                          "which zone 2 cannot read to redact it (it asks for identity)")


def content_encoding(upstream: Response) -> str:
    return upstream.headers.get("Content-Encoding", "").strip().lower()


def fits_buffer(upstream: Response) -> bool:
    """Not a stream, and of a known, modest length: read it whole and send it in one write. (A compressed body is
    decoded as it comes: its Content-Length says nothing of the decoded size.)"""
    length = upstream.headers.get("Content-Length")
    return (upstream.content_type != "text/event-stream" and length is not None and length.isdigit()
            and int(length) <= MAX_BUFFERED and content_encoding(upstream) in ("", "identity"))


async def buffered(upstream: Response, redactor: Redactor) -> Buffered:
    """A response with a known length: read whole, redacted, sent in one write."""
    try:
        raw = await upstream.read()
    except UpstreamError:
        raise UpstreamFailed(502, "upstream_broken", "the upstream's answer broke off") from None
    response = Buffered(status=upstream.status, reason=redactor.scrub_text(upstream.reason) or None,
                        body=redactor.scrub(raw))
    for key, value in response_headers(upstream.headers, redactor):
        response.headers.add(key, value)
    response.raw = raw
    return response


async def relay_stream(request: web.Request, upstream: Response, redactor: Redactor,
                       meter: StreamMeter | BodyMeter | None) -> web.StreamResponse:
    """Pass a stream through chunk by chunk. If the agent goes away, keep reading until usage arrives.

    If the upstream breaks off, the agent's connection is cut too (no clean end of the chunked
    body), so the agent's client sees a truncated answer rather than a complete-looking one.
    """
    response = web.StreamResponse(status=upstream.status, reason=redactor.scrub_text(upstream.reason) or None)
    for key, value in response_headers(upstream.headers, redactor):
        response.headers.add(key, value)
    agent_gone = False
    try:
        await response.prepare(request)
    except ConnectionResetError:
        agent_gone = True
    try:
        async for chunk in upstream.chunks():
            out = meter.feed(chunk) if meter is not None else chunk
            if agent_gone:
                if meter is None or meter.complete:
                    return response
                continue
            out = redactor.feed(out)
            if out and not await in_time(request, response.write(out)):
                agent_gone = True
    except UpstreamError:
        response.force_close()
        if request.transport is not None:
            request.transport.close()
        return response
    tail = redactor.feed(meter.flush()) if meter is not None else b""
    tail += redactor.flush()
    if not agent_gone and (not tail or await in_time(request, response.write(tail))):
        await in_time(request, response.write_eof())
    return response


def memory_costs() -> CostTracker:
    """A cost tracker with an in-memory ledger and no prices (every LLM call is refused as unpriced)."""
    return CostTracker(Ledger(Path(":memory:")), lambda *event: None, lambda: datetime.now(UTC))


Relay = Callable[[str, dict[str, Any] | None], Awaitable[bool | None]]


def progress_of(data: Any) -> dict[str, Any] | None:
    """The optional progress of a heartbeat body: ``{"step": 8, "total": 15, "message": "…"}``."""
    if data is None or data == {}:
        return None
    if not isinstance(data, dict) or set(data) - {"step", "total", "message"}:
        raise ValueError("a heartbeat body is {} or any of step, total (whole numbers) and message (text)")
    for key in ("step", "total"):
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 0):
            raise ValueError(f"{key} must be a whole number >= 0")
    if "message" in data and (not isinstance(data["message"], str) or len(data["message"]) > 1000):
        raise ValueError("message must be text of at most 1000 characters")
    return dict(data)


def init_gateway(registry: Registry, whois: Whois, costs: CostTracker | None = None,
                 relay: Relay | None = None, guard: Guard | None = None, tasks: TaskLink | None = None,
                 held: HeldTasks | None = None) -> web.Application:
    """The agent-facing aiohttp application (serve it with ``guard.serve_guarded``, or any aiohttp site in
    tests: the shares of memory hold either way, the connection limits and timers only when guarded).

    ``relay`` takes heartbeats to the daemon and ``tasks`` the task calls (None: they are answered 503);
    ``held`` is where the task each agent holds is kept (``app[TASKS]``; the control API forgets agents in it): give it
    ``on_release=costs.release_task``, so that a task's spend leaves memory with its last holder."""
    tracker = costs or memory_costs()
    shares = guard or Guard(counts=tracker.counts)
    @web.middleware
    async def targets(request: web.Request, handler: Any) -> web.StreamResponse:
        # Authority-form (CONNECT host:port) and the like never reach a route: refuse them the same way.
        if not request.raw_path.startswith("/"):
            raise Zone2Error(400, "bad_request", "the request target must be a path starting with a single /")
        result: web.StreamResponse = await handler(request)
        return result

    app = web.Application(client_max_size=MAX_BODY, middlewares=[guard_middleware, targets])
    app[GUARD] = shares
    app[TASKS] = held if held is not None else HeldTasks(on_release=tracker.release_task)

    async def open_upstreams(app: web.Application) -> Any:
        # No cookie jar: the pools are shared by every agent. Set-Cookie and Cookie pass through as headers,
        # as a stateless proxy's do. Bodies an upstream compresses despite Accept-Encoding: identity are decoded.
        app[UPSTREAMS] = Upstreams(connect_timeout=CONNECT_TIMEOUT, read_timeout=IDLE_TIMEOUT)
        app[REGISTRY] = registry
        app[GATEWAY] = Gateway(registry, whois, app[UPSTREAMS], tracker, shares)
        yield
        await app[UPSTREAMS].close()

    app.cleanup_ctx.append(open_upstreams)

    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[GATEWAY].handle(request)

    async def heartbeat(request: web.Request) -> web.StreamResponse:
        """POST /fleetd/heartbeat: relayed to the daemon's watchdog, attributed by source address."""
        reg = await request.app[GATEWAY].identify(request)
        if reg is None:
            raise Zone2Error(403, "unknown_agent", "this address is not a fleetd agent")
        raw = await read_body(request, MAX_HEARTBEAT, "heartbeat bodies")
        try:
            progress = progress_of(json.loads(raw) if raw.strip() else None)
        except ValueError as exc:
            raise Zone2Error(400, "bad_request", f"invalid heartbeat: {exc}") from None
        taken = None if relay is None else await relay(reg.agent_id, progress)
        if taken is None:
            raise Zone2Error(503, "daemon_unreachable", "the daemon did not take the heartbeat: try again")
        if not taken:
            raise Zone2Error(404, "not_watched", "the daemon is not watching this agent (it is not running)")
        return web.json_response({"ok": True, "agent_id": reg.agent_id})

    async def health(request: web.Request) -> web.Response:
        """GET /fleetd/health: the daemon's probe of what agents see (this port, this loop), from the host."""
        return web.json_response({"ok": True})

    async def identify(request: web.Request) -> Registration | None:
        return await request.app[GATEWAY].identify(request)

    app.router.add_post("/fleetd/heartbeat", heartbeat)
    app.router.add_get("/fleetd/health", health)
    TaskRoutes(tasks, app[TASKS], identify, registry).add_to(app)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
