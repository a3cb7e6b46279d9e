"""The control API's routes for deployments and their tasks (``fleetd deploy``, ``fleetd task``); docs/openapi.yaml
describes each. Errors are translated by ``fleetd.api``'s middleware like every other route's."""

from __future__ import annotations

from aiohttp import web

from fleetd.api_input import body, flag, services
from fleetd.errors import InvalidRequest
from fleetd.hangup import until_hangup
from fleetd.task_queue import MAX_TTL
from fleetd.units import parse_duration


async def deploy(request: web.Request) -> web.Response:
    """Create or update (``kubectl apply``): 201 when created, 200 otherwise, with what was done in ``message``."""
    s = services(request)
    data = await body(request)
    image = data.get("image")
    if isinstance(image, str) and image:
        await s.agents.check_image(image)
    role = data.get("role") or "default"
    if isinstance(role, str):  # its agents' egress within the role's, refused here rather than at each launch
        s.zone2.check_egress(role, data.get("egress"))
    applied = s.fleet.apply(request.match_info["name"], data, s.agents.host_cpus)
    view = {**s.fleet.view(applied.deployment), "message": applied.message}
    return web.json_response(view, status=201 if applied.message == "created" else 200)


async def list_deployments(request: web.Request) -> web.Response:
    fleet = services(request).fleet
    return web.json_response([fleet.view(d) for d in fleet.deployments.list()])


async def inspect_deployment(request: web.Request) -> web.Response:
    fleet = services(request).fleet
    return web.json_response(fleet.view(fleet.deployments.get(request.match_info["name"]), detail=True))


async def scale(request: web.Request) -> web.Response:
    data = await body(request)
    unknown = set(data) - {"min", "max", "warm"}
    if unknown:
        raise InvalidRequest(f"unknown scale fields: {sorted(unknown)}")
    fleet = services(request).fleet
    deployment = fleet.deployments.scale(request.match_info["name"], data.get("min"), data.get("max"),
                                         data.get("warm"))
    fleet.wake()
    return web.json_response(fleet.view(deployment))


async def promote(request: web.Request) -> web.Response:
    """The rolling-out version becomes current now (``fleetd deploy promote``); 409 without a rollout."""
    fleet = services(request).fleet
    return web.json_response(fleet.view(fleet.promote(request.match_info["name"])))


async def rollback(request: web.Request) -> web.Response:
    """The rolling-out version drains now (``fleetd deploy rollback``); 409 without a rollout."""
    fleet = services(request).fleet
    return web.json_response(fleet.view(fleet.rollback(request.match_info["name"])))


async def remove(request: web.Request) -> web.Response:
    fleet = services(request).fleet
    deployment = fleet.deployments.remove(request.match_info["name"], flag(request, "drain"))
    fleet.wake()
    return web.json_response(fleet.view(deployment))


async def submit(request: web.Request) -> web.Response:
    fleet = services(request).fleet
    data = await body(request)
    task = fleet.submit(data)
    if data.get("key") is not None:  # a known key answers the first task, which may have cost already
        task = fleet.with_cost(task)
    return web.json_response(task.to_json(), status=201)  # else just queued: no call of it yet


async def submit_batch(request: web.Request) -> web.Response:
    """Several tasks of one deployment at once: all queued, in order, or none (a 4xx naming the first bad one)."""
    fleet = services(request).fleet
    tasks = fleet.submit_many(await body(request))
    if any(t.key is not None for t in tasks):  # a known key answers its first task, which may have cost already
        tasks = fleet.with_costs(tasks)
    return web.json_response([t.to_json() for t in tasks], status=201)


async def list_tasks(request: web.Request) -> web.Response:
    limit = request.query.get("limit", "1000")
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 10_000:
        raise InvalidRequest(f"query parameter limit: a whole number from 1 to 10000, got {limit!r}")
    fleet = services(request).fleet
    tasks = fleet.queue.tasks(request.query.get("deployment") or None, request.query.get("state") or None,
                              int(limit))
    return web.json_response([t.to_json() for t in fleet.with_costs(tasks)])


async def inspect_task(request: web.Request) -> web.Response:
    fleet = services(request).fleet
    return web.json_response(fleet.with_cost(fleet.queue.get(request.match_info["id"])).to_json())


async def wait_task(request: web.Request) -> web.Response:
    """The task once finished; ``?timeout=S``: 408 when it is not by then. Ends when the client hangs up."""
    fleet = services(request).fleet
    fleet.queue.get(request.match_info["id"])  # an unknown task: 404 at once
    raw = request.query.get("timeout")
    timeout = None if raw in (None, "") else parse_duration(raw, "query parameter timeout")
    if timeout is not None and timeout > MAX_TTL:
        raise InvalidRequest(f"query parameter timeout: at most {MAX_TTL} s (a task's longest ttl), got {raw!r}")
    try:
        task = await until_hangup(request, fleet.wait_task(request.match_info["id"], timeout))
    except ConnectionResetError:
        return web.Response()  # nobody is left to answer
    return web.json_response(fleet.with_cost(task).to_json())


async def cancel(request: web.Request) -> web.Response:
    fleet = services(request).fleet
    return web.json_response(fleet.with_cost(fleet.cancel(request.match_info["id"])).to_json())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/deployments", list_deployments)
    app.router.add_put("/v1/deployments/{name}", deploy)
    app.router.add_get("/v1/deployments/{name}", inspect_deployment)
    app.router.add_delete("/v1/deployments/{name}", remove)
    app.router.add_post("/v1/deployments/{name}/scale", scale)
    app.router.add_post("/v1/deployments/{name}/promote", promote)
    app.router.add_post("/v1/deployments/{name}/rollback", rollback)
    app.router.add_get("/v1/tasks", list_tasks)
    app.router.add_post("/v1/tasks", submit)
    app.router.add_post("/v1/tasks/batch", submit_batch)
    app.router.add_get("/v1/tasks/{id}", inspect_task)
    app.router.add_post("/v1/tasks/{id}/wait", wait_task)
    app.router.add_post("/v1/tasks/{id}/cancel", cancel)
