"""The control API: JSON over HTTP on the daemon's Unix socket (aiohttp).

One route per CLI verb; docs/openapi.yaml describes each. Every error is a
JSON body ``{"error": {"type", "code", "message"}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from fleetd import fleet_api
from fleetd.api_input import MAX_BODY, SERVICES, body, flag, number, services
from fleetd.egress import presets
from fleetd.errors import FleetdError, InvalidRequest
from fleetd.filters import parse_filters
from fleetd.gateway import zone2_egress_log
from fleetd.hangup import until_hangup
from fleetd.models import LIVE_STATES, iso, parse_iso, utcnow
from fleetd.services import Services
from fleetd.times import parse_time
from fleetd.zone2.egress_log import read_log

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"type": code, "code": code, "message": message}}
    return web.json_response(body, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate every failure into a JSON error, once, here."""
    try:
        return await handler(request)
    except FleetdError as exc:
        return web.json_response(exc.to_json(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error: see the daemon's log")


async def status(request: web.Request) -> web.Response:
    return web.json_response(services(request).status())


async def list_agents(request: web.Request) -> web.Response:
    filters = parse_filters(request.query.getall("filter", []))
    s = services(request)
    return web.json_response([s.agent_json(a) for a in s.agents.list_agents(flag(request, "all"), filters)])


async def spawn(request: web.Request) -> web.Response:
    s = services(request)
    agent = await s.agents.spawn(await body(request))
    return web.json_response(s.agent_json(agent), status=201)


async def inspect(request: web.Request) -> web.Response:
    s = services(request)
    return web.json_response(s.agent_json(s.records.resolve(request.match_info["ref"]), detail=True))


async def stop(request: web.Request) -> web.Response:
    data = await body(request)
    s = services(request)
    wait = data.get("wait", True)
    if not isinstance(wait, bool):
        raise InvalidRequest("wait must be true or false")
    agent = await s.agents.stop(request.match_info["ref"], data.get("grace"), wait)
    return web.json_response(s.agent_json(agent))


async def kill(request: web.Request) -> web.Response:
    data = await body(request)
    s = services(request)
    agent = await s.agents.kill(request.match_info["ref"], data.get("signal", "SIGKILL"))
    return web.json_response(s.agent_json(agent))


async def extend(request: web.Request) -> web.Response:
    data = await body(request)
    if "ttl" not in data:
        raise InvalidRequest("extend needs a ttl (seconds from now)")
    s = services(request)
    agent = await s.agents.extend(request.match_info["ref"], data["ttl"])
    return web.json_response(s.agent_json(agent))


async def remove(request: web.Request) -> web.Response:
    s = services(request)
    agent = await s.agents.remove(request.match_info["ref"], flag(request, "force"))
    return web.json_response(s.agent_json(agent))


async def wait(request: web.Request) -> web.Response:
    s = services(request)
    agent = s.records.resolve(request.match_info["ref"])  # an unknown agent: 404 at once
    try:
        agent = await until_hangup(request, s.agents.wait(agent["id"]))
    except ConnectionResetError:
        return web.Response()  # nobody is left to answer
    return web.json_response(s.agent_json(agent))


async def logs(request: web.Request) -> web.StreamResponse:
    s = services(request)
    since = request.query.get("since")
    start = parse_time(since, "query parameter since").timestamp() if since else None
    follow, tail, timestamps = flag(request, "follow"), number(request, "tail"), flag(request, "timestamps")
    # Bad input is a 400 whichever agent it names: the query is read before the agent is looked up.
    chunks = await s.logs.stream(s.records.resolve(request.match_info["ref"]), follow, tail, start, timestamps)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    try:
        while True:
            chunk = await until_hangup(request, anext(chunks, b""))
            if not chunk:
                break
            await response.write(chunk)
        await response.write_eof()
    except (ConnectionResetError, FleetdError):
        pass  # the reader hung up (Ctrl-C on logs -f), or the engine went away mid-stream
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    return response


def moment(request: web.Request, name: str) -> str | None:
    """A time query parameter (``fleetd.times``: 10m, RFC 3339 or Unix seconds) as events store times."""
    value = request.query.get(name)
    if value is None or value == "":
        return None
    return iso(parse_time(value, f"query parameter {name}"))


async def events(request: web.Request) -> web.StreamResponse:
    s = services(request)
    since = number(request, "since")
    limit = number(request, "limit")
    if limit == 0:
        raise InvalidRequest("query parameter limit: must be at least 1")
    start, until = moment(request, "from"), moment(request, "until")
    if start is not None and until is not None and until < start:
        raise InvalidRequest("query parameter until: before from")
    agent_id = request.query.get("agent")
    if agent_id:
        agent_id = s.records.resolve(agent_id)["id"]
    follow = flag(request, "follow")
    queue = s.events.subscribe() if follow else None
    try:
        past = s.records.events(since, limit or 1000, agent_id, start, until)
        if not follow:
            return web.json_response(past)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        last = since or 0
        while past:  # every past event, page by page, so that following starts where asked
            for event in past:
                await response.write(json.dumps(event).encode() + b"\n")
                last = event["id"]
            past = s.records.events(last, limit or 1000, agent_id, start, until) if len(past) == (limit or 1000) else []
        assert queue is not None
        end = parse_iso(until) if until is not None else None
        while True:
            left = (end - utcnow()).total_seconds() if end is not None else None
            if left is not None and left <= 0:
                break  # --until: the stream ends at that time, as docker events --until does
            try:
                new = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            if new is None:
                break  # this reader fell too far behind: end the stream rather than skip events
            if new["id"] <= last or (agent_id and new["agent_id"] != agent_id):
                continue
            if until is not None and new["time"] > until:
                break
            await response.write(json.dumps(new).encode() + b"\n")
        await response.write_eof()
        return response
    except ConnectionResetError:
        return web.Response()
    finally:
        if queue is not None:
            s.events.unsubscribe(queue)


async def set_credential(request: web.Request) -> web.Response:
    record = await services(request).admin.set_credential(request.match_info["name"], await body(request))
    return web.json_response(record)


async def list_credentials(request: web.Request) -> web.Response:
    return web.json_response(services(request).admin.credentials())


async def remove_credential(request: web.Request) -> web.Response:
    await services(request).admin.remove_credential(request.match_info["name"])
    return web.json_response({"removed": request.match_info["name"]})


async def set_role(request: web.Request) -> web.Response:
    return web.json_response(await services(request).admin.set_role(request.match_info["name"], await body(request)))


async def list_roles(request: web.Request) -> web.Response:
    return web.json_response(services(request).records.roles())


async def egress_log(request: web.Request) -> web.Response:
    """Connections agents asked zone 2's forward proxy for, newest ``limit`` (default 100), oldest first."""
    s = services(request)
    limit = number(request, "limit")
    if limit == 0:
        raise InvalidRequest("query parameter limit: must be at least 1")
    agent_id = request.query.get("agent")
    if agent_id:
        agent_id = s.records.resolve(agent_id)["id"]
    path = zone2_egress_log(s.config.state_dir)
    rows = await asyncio.to_thread(read_log, path, agent_id or None, flag(request, "denied"), limit or 100)
    return web.json_response(rows)


async def egress_presets(request: web.Request) -> web.Response:
    return web.json_response(presets())


async def list_prices(request: web.Request) -> web.Response:
    return web.json_response(services(request).zone2.prices())


async def set_price(request: web.Request) -> web.Response:
    return web.json_response(await services(request).zone2.set_price(request.match_info["model"], await body(request)))


async def remove_price(request: web.Request) -> web.Response:
    await services(request).zone2.remove_price(request.match_info["model"])
    return web.json_response({"removed": request.match_info["model"]})


async def budget(request: web.Request) -> web.Response:
    """Every live agent's budget (``?all=1``: exited ones too), and the instance's."""
    agents = services(request).records.agents(None if flag(request, "all") else tuple(LIVE_STATES))
    return web.json_response(await services(request).zone2.budget_report(agents))


async def agent_budget(request: web.Request) -> web.Response:
    agent = services(request).records.resolve(request.match_info["ref"])
    report = await services(request).zone2.budget_report([agent])
    return web.json_response(report["agents"][0])


async def drain(request: web.Request) -> web.Response:
    data = await body(request)
    return web.json_response(await services(request).agents.drain_fleet(data.get("timeout")))


async def undrain(request: web.Request) -> web.Response:
    return web.json_response(services(request).agents.undrain())


async def stats(request: web.Request) -> web.Response:
    return web.json_response(await services(request).agents.stats())


async def rightsize(request: web.Request) -> web.Response:
    """``?deployment=NAME`` or ``?role=NAME``, exactly one (fleetd.rightsize)."""
    deployment, role = request.query.get("deployment"), request.query.get("role")
    if (deployment is None) == (role is None) or not (deployment or role):
        raise InvalidRequest("give exactly one of the query parameters deployment and role")
    return web.json_response(services(request).rightsize(deployment, role))


async def teardown(request: web.Request) -> web.Response:
    removed, failed = await services(request).agents.teardown()
    return web.json_response({"removed": removed, "failed": failed})


def init_app(parts: Services) -> web.Application:
    """The aiohttp application serving the control API."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY)
    app[SERVICES] = parts
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/agents", list_agents)
    app.router.add_post("/v1/agents", spawn)
    app.router.add_get("/v1/agents/{ref}", inspect)
    app.router.add_delete("/v1/agents/{ref}", remove)
    app.router.add_post("/v1/agents/{ref}/wait", wait)
    app.router.add_get("/v1/agents/{ref}/logs", logs)
    app.router.add_post("/v1/agents/{ref}/stop", stop)
    app.router.add_post("/v1/agents/{ref}/kill", kill)
    app.router.add_post("/v1/agents/{ref}/extend", extend)
    app.router.add_get("/v1/events", events)
    app.router.add_post("/v1/teardown", teardown)
    app.router.add_post("/v1/drain", drain)
    app.router.add_post("/v1/undrain", undrain)
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/v1/rightsize", rightsize)
    app.router.add_get("/v1/creds", list_credentials)
    app.router.add_put("/v1/creds/{name}", set_credential)
    app.router.add_delete("/v1/creds/{name}", remove_credential)
    app.router.add_get("/v1/roles", list_roles)
    app.router.add_put("/v1/roles/{name}", set_role)
    app.router.add_get("/v1/egress/log", egress_log)
    app.router.add_get("/v1/egress/presets", egress_presets)
    app.router.add_get("/v1/prices", list_prices)
    app.router.add_put("/v1/prices/{model}", set_price)
    app.router.add_delete("/v1/prices/{model}", remove_price)
    app.router.add_get("/v1/budget", budget)
    app.router.add_get("/v1/agents/{ref}/budget", agent_budget)
    fleet_api.add_routes(app)
    return app
