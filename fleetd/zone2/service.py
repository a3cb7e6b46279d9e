"""Zone 2's process: the agent-facing gateway plus a control socket only the daemon can reach.

The control directory is bind-mounted from the daemon's state dir into zone 2
alone: ``zone2.sock`` (served here; the daemon pushes credentials and
registrations) and ``daemon.sock`` (served by the daemon; zone 2 asks it who an
unknown address is).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from fleetd import loops
from fleetd.fingerprint import code_fingerprint
from fleetd.open_files import raise_open_files
from fleetd.zone2.contract import (
    BudgetAnswer,
    ContractError,
    Credentials,
    Event,
    Health,
    Heartbeat,
    HeartbeatAnswer,
    HeartbeatBatch,
    Registration,
    Registrations,
    TaskAnswer,
    TaskAnswers,
    TaskComplete,
    TaskFail,
    TaskLease,
    TaskNext,
    TaskOutcome,
    Zone2Policy,
)
from fleetd.zone2.control import M, received, refuse_malformed
from fleetd.zone2.costs import CostTracker
from fleetd.zone2.egress_door import EgressDoor
from fleetd.zone2.egress_log import EGRESS_FILE, EgressLog
from fleetd.zone2.egress_records import EgressRecords
from fleetd.zone2.group_send import GroupSend
from fleetd.zone2.guard import (
    IDLE_TIMEOUT,
    LARGE_BODY,
    LINGER,
    READ_BUFFER,
    Guard,
    serve_guarded,
    stop_guarded,
)
from fleetd.zone2.ledger import LEDGER_FILE, Ledger
from fleetd.zone2.proxy import init_gateway
from fleetd.zone2.registry import Registry
from fleetd.zone2.tasks import PARSE_IN_THREAD, DaemonUnreachable, HeldTasks, TaskReply, parse_json

log = logging.getLogger("fleetd.zone2")
CONTROL_SOCKET = "zone2.sock"
DAEMON_SOCKET = "daemon.sock"
GATEWAY_PORT = 8080
EGRESS_PORT = 3128  # the forward proxy (fleetd.zone2.forward_proxy): the port Squid made the convention
HEARTBEAT_LINGER = 0.02  # s a heartbeat waits in zone 2 for others to go to the daemon with it
TASK_NEXT_MARGIN = 10.0  # s the daemon has to answer a long-poll beyond its wait
TASK_ANSWER_TIMEOUT = 20.0  # s the daemon has to record a completion or failure (a transaction of up to 1 MiB)
GROUPED_COMPLETIONS = 64  # completions relayed to the daemon in one request (one transaction) at most
GROUPED_OUTPUT = 16 << 10  # bytes of a completion's JSON from which it goes alone (a group stays under 1 MiB)


def init_control(registry: Registry, costs: CostTracker, guard: Guard, started: float,
                 held: HeldTasks | None = None, on_forget: Callable[[str], None] | None = None) -> web.Application:
    """The daemon-facing control API (Unix socket): each handler reads its message with the contract's class.
    ``held``: the tasks the agents hold (the gateway's), forgotten with the agents, as are the spend pools no
    registration names any more; ``on_forget`` hears each agent that is no longer registered (the forward proxy
    closes its connections and drops its counters)."""
    app = web.Application(client_max_size=16 << 20, middlewares=[refuse_malformed])
    tasks = held if held is not None else HeldTasks(on_release=costs.release_task)

    async def put_policy(request: web.Request) -> web.Response:
        policy = await received(request, Zone2Policy)  # 400 for a newer daemon's, which this one cannot read
        costs.configure(policy)
        registry.host_addresses, registry.agent_networks = policy.host_addresses, policy.agent_networks
        registry.policy_received = True
        return web.json_response({"prices": len(costs.prices)})

    async def get_budget(request: web.Request) -> web.Response:
        agents = request.query.getall("agent", [])
        answer = BudgetAnswer(costs.instance_status(), {agent_id: costs.status(agent_id) for agent_id in agents})
        return web.json_response(answer.to_json())

    async def health(request: web.Request) -> web.Response:
        return web.json_response(Health(
            len(registry.by_ip), len(registry.creds), round(time.monotonic() - started, 1), os.getpid(),
            ledger_error=costs.ledger.error, ledger_unwritten=len(costs.ledger.unwritten), code=code_fingerprint(),
            gateway=guard.status()).to_json())

    async def put_creds(request: web.Request) -> web.Response:
        registry.set_creds((await received(request, Credentials)).creds)
        return web.json_response({"creds": len(registry.creds)})

    def forgotten(agent_ids: Iterable[str]) -> None:
        if on_forget is not None:
            for agent_id in agent_ids:
                on_forget(agent_id)

    async def put_agents(request: web.Request) -> web.Response:
        agents = (await received(request, Registrations)).agents
        kept = {reg.agent_id for reg in agents}
        forgotten({reg.agent_id for reg in registry.by_ip.values()} - kept)
        registry.replace_agents(agents)
        tasks.keep({reg.agent_id for reg in agents})
        for reg in agents:
            tasks.learn(reg)  # zone 2 (re)started while the agent held a task: its calls are still the task's
        costs.keep_pools(registry.pools())
        return web.json_response({"agents": len(registry.by_ip)})

    async def post_agent(request: web.Request) -> web.Response:
        reg = await received(request, Registration)
        registry.register(reg)
        tasks.learn(reg)
        costs.keep_pools(registry.pools())  # it may have replaced another agent's registration at its address
        return web.json_response({"agents": len(registry.by_ip)})

    async def delete_agent(request: web.Request) -> web.Response:
        registry.unregister(request.match_info["agent_id"])
        costs.forget(request.match_info["agent_id"])
        forgotten([request.match_info["agent_id"]])
        tasks.forget(request.match_info["agent_id"])
        costs.keep_pools(registry.pools())
        return web.json_response({"agents": len(registry.by_ip)})

    app.router.add_get("/control/health", health)
    app.router.add_put("/control/policy", put_policy)
    app.router.add_get("/control/budget", get_budget)
    app.router.add_put("/control/creds", put_creds)
    app.router.add_put("/control/agents", put_agents)
    app.router.add_post("/control/agents", post_agent)
    app.router.add_delete("/control/agents/{agent_id}", delete_agent)
    return app


class DaemonLink:
    """Zone 2's line to the daemon over ``daemon.sock``: who is this address, heartbeats and events to record, and the
    agents' task calls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.session: aiohttp.ClientSession | None = None
        self.task_session: aiohttp.ClientSession | None = None
        self.pending: set[asyncio.Task[None]] = set()
        self._beats: dict[str, tuple[dict[str, Any] | None, list[asyncio.Future[bool | None]]]] = {}
        self._flush: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None
        self.completions: GroupSend[tuple[str, bytes], TaskReply] = GroupSend(self._complete_group,
                                                                              GROUPED_COMPLETIONS)
        self._grouped = True  # False once the daemon has no route for a group (one from before it)

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.path)),
                                                 timeout=aiohttp.ClientTimeout(total=5))
        return self.session

    async def whois(self, ip: str) -> Registration | None:
        try:
            async with self._session().get("http://daemon/control/whois", params={"ip": ip}) as response:
                if response.status != 200:
                    return None
                return Registration.from_json(await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):  # ValueError: not JSON, or not a registration
            return None

    async def heartbeat(self, agent_id: str, progress: dict[str, Any] | None) -> bool | None:
        """Relay a heartbeat: True taken, False the daemon does not watch this agent, None unreachable.

        Heartbeats go to the daemon in batches, as a database commits a group: a beat waits
        ``HEARTBEAT_LINGER`` for others to join it, and beats that come while a batch is on its way wait for
        it and go together right after. An agent has its answer in ~25 ms, and 200 agents beating every 5 s
        cost the daemon fewer requests than beats.
        """
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        last, waiting = self._beats.get(agent_id, (None, []))
        self._beats[agent_id] = (progress if progress is not None else last, waiting)
        waiting.append(future)
        if self._flush is None and self._sending is None:
            self._flush = asyncio.get_running_loop().call_later(HEARTBEAT_LINGER, self._send_beats)
        return await future

    def _send_beats(self) -> None:
        self._flush = None
        beats, self._beats = self._beats, {}
        self._sending = task = asyncio.get_running_loop().create_task(self._post_beats(beats))
        self.pending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        self._sending = None
        if self._beats and self._flush is None:
            self._send_beats()  # they have waited for this batch already

    async def _post_beats(self, beats: dict[str, tuple[dict[str, Any] | None, list[asyncio.Future[bool | None]]]]
                          ) -> None:
        batch = HeartbeatBatch(tuple(Heartbeat(agent_id, progress) for agent_id, (progress, _) in beats.items()))
        taken: set[str] | None
        try:
            async with self._session().post("http://daemon/control/heartbeats", json=batch.to_json()) as response:
                taken = set(HeartbeatAnswer.from_json(await response.json()).taken) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):  # ValueError: not JSON, or not an answer
            taken = None
        for agent_id, (_, waiting) in beats.items():
            for future in waiting:
                if not future.done():
                    future.set_result(None if taken is None else agent_id in taken)

    # -- the agents' tasks (zone2.tasks) --------------------------------------------------------------------------
    def _task_session(self) -> aiohttp.ClientSession:
        """The task calls' own connections: a long-poll holds one for up to a minute, and a thousand agents may
        poll at once, so their pool has no limit (the other calls' pool of 100 would queue them, and the
        heartbeats behind them); each call has its own timeout."""
        if self.task_session is None:
            self.task_session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.path), limit=0))
        return self.task_session

    async def task_next(self, message: TaskNext) -> TaskReply:
        """POST /control/tasks/next: a lease (200), none (204), or the daemon's 4xx; else DaemonUnreachable."""
        status, raw = await self._task_call("/control/tasks/next", _compact(message.to_json()),
                                            message.wait + TASK_NEXT_MARGIN, (200, 204))
        if status != 200:
            return TaskReply(status, raw)
        return TaskReply(status, raw, lease=_read(TaskLease, await _parsed(raw)))

    async def task_complete(self, task_id: str, message: TaskComplete, heavy: bool = False) -> TaskReply:
        """POST /control/tasks/ID/complete (``heavy``: an output whose JSON is written in a thread). A small one that
        waits for no next task goes with the others that arrive meanwhile (``GroupSend``), in one transaction."""
        body = await asyncio.to_thread(_compact, message.to_json()) if heavy else _compact(message.to_json())
        if heavy or message.next_wait or len(body) > GROUPED_OUTPUT:
            return await self._complete_alone(task_id, body, message.next_wait)
        return await self.completions((task_id, body))

    async def _complete_alone(self, task_id: str, body: bytes, next_wait: float | None) -> TaskReply:
        return await self._task_answer(f"/control/tasks/{quote(task_id, safe='')}/complete", body, next_wait)

    async def _complete_group(self, items: list[tuple[str, bytes]]) -> list[TaskReply | Exception]:
        """POST /control/tasks/completions (:class:`TaskCompletions`, written from each completion's JSON): one
        answer per completion. A lone one goes alone; so does each of a group the daemon could not read (a 4xx: one
        agent's completion must not cost the others theirs), and all of them to a daemon without the route."""
        if len(items) == 1 or not self._grouped:
            return await self._complete_each(items)
        group = b"[" + b",".join(b'{"task_id":' + _compact(task_id) + b',"completion":' + body + b"}"
                                 for task_id, body in items) + b"]"
        status, raw = await self._task_call("/control/tasks/completions", group, TASK_ANSWER_TIMEOUT, (200,))
        if status != 200:
            if status in (404, 405):
                self._grouped = False
            log.warning("the daemon answered %d to a group of %d completions: sending each alone", status, len(items))
            return await self._complete_each(items)
        answers = _read(TaskAnswers, await _parsed(raw)).answers
        if len(answers) != len(items):
            raise DaemonUnreachable(f"it answered {len(answers)} of {len(items)} completions")
        return [_reply_of(answer) for answer in answers]

    async def _complete_each(self, items: list[tuple[str, bytes]]) -> list[TaskReply | Exception]:
        replies = await asyncio.gather(*(self._complete_alone(task_id, body, None) for task_id, body in items),
                                       return_exceptions=True)
        answered: list[TaskReply | Exception] = []
        for reply in replies:
            if isinstance(reply, TaskReply | Exception):
                answered.append(reply)
            else:
                raise reply  # cancelled: zone 2 stops
        return answered

    async def task_fail(self, task_id: str, message: TaskFail) -> TaskReply:
        """POST /control/tasks/ID/fail."""
        return await self._task_answer(f"/control/tasks/{quote(task_id, safe='')}/fail", _compact(message.to_json()),
                                       message.next_wait)

    async def _task_answer(self, path: str, body: bytes, next_wait: float | None) -> TaskReply:
        """An answer's outcome; with ``next_wait`` the daemon also waits that long for the agent's next task."""
        timeout = TASK_ANSWER_TIMEOUT + (next_wait or 0) + (TASK_NEXT_MARGIN if next_wait else 0)
        status, raw = await self._task_call(path, body, timeout, (200,))
        if status != 200:
            return TaskReply(status, raw)
        return TaskReply(status, raw, outcome=_read(TaskOutcome, await _parsed(raw)))

    async def _task_call(self, path: str, body: bytes, timeout: float, taken: tuple[int, ...]) -> tuple[int, bytes]:
        """The daemon's status and body: one of ``taken`` or a 4xx; else DaemonUnreachable."""
        try:
            # a body past 1 MiB sent from a buffer, a chunk at a time (as bytes, aiohttp would warn it holds the loop)
            data: bytes | io.BytesIO = io.BytesIO(body) if len(body) > LARGE_BODY else body
            async with self._task_session().post(f"http://daemon{path}", data=data,
                                                 headers={"Content-Type": "application/json"},
                                                 timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DaemonUnreachable(type(exc).__name__) from None
        if status not in taken and not 400 <= status < 500:
            raise DaemonUnreachable(f"it answered {status}")
        return status, raw

    def emit(self, type_: str, agent_id: str | None, message: str, data: dict[str, Any]) -> None:
        """Send an event to the daemon's log in the background (never holds up a request)."""
        log.info("event %s %s: %s", type_, agent_id or "-", message)
        task = asyncio.get_running_loop().create_task(self._post_event(Event(type_, agent_id, message, data)))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _post_event(self, event: Event) -> None:
        try:
            async with self._session().post("http://daemon/control/events", json=event.to_json()) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError):
            log.warning("could not send event %s to the daemon", event.type)

    async def close(self) -> None:
        if self.pending:
            await asyncio.wait(self.pending, timeout=2)
        await self.completions.close()
        for session in (self.session, self.task_session):
            if session is not None:
                await session.close()


def _compact(message: Any) -> bytes:
    """A message as compact JSON: a task's output is counted by the daemon as such (at most 1 MiB)."""
    return json.dumps(message, separators=(",", ":")).encode()  # ASCII: a lone surrogate an agent sent escaped


async def _parsed(raw: bytes) -> Any:
    """The daemon's JSON answer (a lease carries up to 1 MiB of input: parsed in a thread then)."""
    try:
        return await asyncio.to_thread(parse_json, raw) if len(raw) >= PARSE_IN_THREAD else parse_json(raw)
    except (ValueError, RecursionError):
        raise DaemonUnreachable("its answer is not JSON") from None


def _reply_of(answer: TaskAnswer) -> TaskReply | Exception:
    """One completion's answer in a group, as its own request's would be; what cannot be used fails that one alone."""
    if answer.status != 200:
        return TaskReply(answer.status, _compact(answer.body)) if 400 <= answer.status < 500 else \
            DaemonUnreachable(f"it answered {answer.status}")
    try:
        return TaskReply(200, _compact(answer.body), outcome=_read(TaskOutcome, answer.body))
    except DaemonUnreachable as exc:
        return exc


def _read(cls: type[M], data: Any) -> M:
    try:
        return cls.from_json(data)
    except ContractError as exc:
        raise DaemonUnreachable(f"its answer cannot be read: {exc}") from None


async def serve(control_dir: Path, host: str, port: int) -> None:
    registry = Registry()
    daemon = DaemonLink(control_dir / DAEMON_SOCKET)
    costs = CostTracker(Ledger(control_dir / LEDGER_FILE), daemon.emit)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    guard = Guard(counts=costs.counts)
    held = HeldTasks(on_release=costs.release_task)
    egress = EgressDoor(registry, EgressRecords(EgressLog(control_dir / EGRESS_FILE), costs.counts, daemon.emit),
                        whois=daemon.whois)
    agents_app = init_gateway(registry, daemon.whois, costs, daemon.heartbeat, guard, tasks=daemon, held=held)
    # Bodies are relayed as sent (an LLM call's must come uncompressed: zone 2 meters what it reads), and an idle
    # kept-alive connection is closed by the guard's sweep, not kept for aiohttp's default hour.
    gateway = web.AppRunner(agents_app, access_log=None, handle_signals=False, auto_decompress=False,
                            keepalive_timeout=IDLE_TIMEOUT, lingering_time=LINGER, read_bufsize=READ_BUFFER)
    control = web.AppRunner(init_control(registry, costs, guard, time.monotonic(), held, egress.forget),
                            access_log=None, handle_signals=False)
    await gateway.setup()
    await control.setup()
    control_path = control_dir / CONTROL_SOCKET
    if control_path.exists():
        control_path.unlink()
    await web.UnixSite(control, str(control_path)).start()
    # The daemon connects as root without CAP_DAC_OVERRIDE (its unit's sandbox): the control dir (the daemon's,
    # writable by zone 2's group, in the 0750 state dir) is what keeps others out.
    os.chmod(control_path, 0o666)
    listener, sweeper = await serve_guarded(gateway, guard, host, port)
    await egress.start(host, EGRESS_PORT)
    log.info("zone 2 serving agents on %s:%d (at most %d connections), control on %s", host, port,
             guard.shares.limits.connections, control_path)
    await stop.wait()
    await stop_guarded(listener, sweeper)
    await egress.close()
    if egress.records.log is not None:
        egress.records.log.close()
    await gateway.cleanup()
    await control.cleanup()
    await daemon.close()
    if not costs.ledger.flush():
        log.error("ledger: %d rows could not be written (%s) and are lost", len(costs.ledger.unwritten),
                  costs.ledger.error)
    costs.ledger.close()


def run(control_dir: Path, host: str = "0.0.0.0", port: int = GATEWAY_PORT) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log.info("zone 2 may open %d files", raise_open_files())  # before the gateway and the proxy size their shares
    loops.run(serve(control_dir, host, port), "zone 2")  # on every agent call's path
    return 0
