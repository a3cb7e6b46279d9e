"""Agent programs for the attacks on zone 2's liveness (stdlib only: they run in fleetd/agent-python).

``ATTACKER`` runs one attack, bounded in count and time, and prints ``ATTACK {json}``: what it tried and what zone 2
answered. ``BYSTANDER`` meanwhile beats and makes a small LLM call every ``PERIOD`` and prints ``BYSTANDER {json}``:
each one's status and latency. Used by tests/integration/test_hostile_agents.py and bench/hostile.py.
"""

from __future__ import annotations

import json
from typing import Any

ATTACKS = ("body", "json", "connections", "slowloris")
PERIOD = 0.1  # s between two calls of the bystander

_COMMON = r'''
import json, os, socket, sys, threading, time
HOST, PORT = os.environ["FLEETD_GATEWAY_URL"].removeprefix("http://").split(":")
PORT = int(PORT)
SECONDS = float(sys.argv[2])
END = time.monotonic() + SECONDS
lock = threading.Lock()
seen = {}
def note(key, n=1):
    with lock:
        seen[key] = seen.get(key, 0) + n
def status_of(data):
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else ("cut" if not data else "garbage")
'''

ATTACKER = _COMMON + r'''
ATTACK = sys.argv[1]

def body():
    """Heartbeats declaring 10,485,000 bytes and sending all but the last: the OOM of zone 2."""
    def one():
        try:
            s = socket.create_connection((HOST, PORT), timeout=30)
            s.sendall(b"POST /fleetd/heartbeat HTTP/1.1\r\nHost: zone2\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 10485000\r\n\r\n")
            chunk, sent = b"[{}," * 16384, 0
            while sent < 10485000 - 1 and time.monotonic() < END:
                n = min(len(chunk), 10485000 - 1 - sent)
                s.sendall(chunk[:n])
                sent += n
            note("bytes_sent", sent)
            s.settimeout(max(0.1, END - time.monotonic()))
            note(status_of(s.recv(200)))
        except OSError as exc:
            note(type(exc).__name__)
    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

def json_bomb():
    """An LLM call whose 9.7 MB body is [{},{},...]: json.loads of it alone peaked near 283 MB."""
    payload = b'{"model": "gpt-4o-mini", "max_tokens": 4, "messages": [' + b"{}," * 3_300_000 + b"{}]}"
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: zone2\r\nAuthorization: Bearer $CRED{openai}\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload))
    def one():
        while time.monotonic() < END:
            try:
                with socket.create_connection((HOST, PORT), timeout=30) as s:
                    s.sendall(head + payload)
                    note(status_of(s.recv(200)))
            except OSError as exc:
                note(type(exc).__name__)
    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

def connections():
    """Idle connections, as many as the agent can open (19,990 in 21 s ran zone 2 out of descriptors)."""
    held = []
    while len(held) < 19_990 and time.monotonic() < END:
        try:
            s = socket.socket()
            s.settimeout(2)
            s.connect((HOST, PORT))
            held.append(s)
        except OSError as exc:
            note(type(exc).__name__)
            time.sleep(0.01)
    note("opened", len(held))
    time.sleep(1)
    for s in held:  # zone 2 answered (a 503 and a close) or closed it, or it still holds it open
        s.setblocking(False)
        try:
            data = s.recv(200)
            note("refused_503" if data.startswith(b"HTTP/1.1 503") else "closed")
        except BlockingIOError:
            note("accepted")
        except OSError:
            note("closed")
    time.sleep(max(0.0, END - time.monotonic()))
    for s in held:
        s.close()

def slowloris():
    """Requests whose heads arrive a byte every second and never end."""
    held = []
    for _ in range(60):
        try:
            held.append(socket.create_connection((HOST, PORT), timeout=5))
        except OSError as exc:
            note(type(exc).__name__)
    line = b"POST /fleetd/heartbeat HTTP/1.1\r\nX-Slow: " + b"a" * 1000
    for i in range(int(SECONDS)):
        for s in list(held):
            s.setblocking(False)
            try:
                closed = s.recv(200) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                held.remove(s)
                note("dropped_by_zone2")
                continue
            s.setblocking(True)
            try:
                s.send(line[i % len(line):i % len(line) + 1])
            except OSError:
                held.remove(s)
                note("dropped_by_zone2")
        time.sleep(1)
    note("still_open_at_end", len(held))

{"body": body, "json": json_bomb, "connections": connections, "slowloris": slowloris}[ATTACK]()
print("ATTACK", json.dumps(seen), flush=True)
'''

BYSTANDER = _COMMON + r'''
import http.client
CHAT = json.dumps({"model": "gpt-4o-mini", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
calls = []
conn = None
def call(method, path, headers, body):
    global conn
    start = time.monotonic()
    try:
        if conn is None:
            conn = http.client.HTTPConnection(HOST, PORT, timeout=10)
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        status = response.status
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = None
    except Exception as exc:
        status = type(exc).__name__
        if conn is not None:
            conn.close()
        conn = None
    return [status, round((time.monotonic() - start) * 1000, 2)]
while time.monotonic() < END:
    began = time.monotonic()
    calls.append(["heartbeat", *call("POST", "/fleetd/heartbeat", {"Content-Type": "application/json"}, "{}")])
    calls.append(["chat", *call("POST", "/v1/chat/completions", {"Authorization": "Bearer $CRED{openai}",
                                                                "Content-Type": "application/json"}, CHAT)])
    time.sleep(max(0.0, float(sys.argv[1]) - (time.monotonic() - began)))
print("BYSTANDER", json.dumps(calls), flush=True)
'''


def attacker_command(attack: str, seconds: float) -> list[str]:
    return ["python3", "-c", ATTACKER, attack, str(seconds)]


def bystander_command(seconds: float) -> list[str]:
    return ["python3", "-c", BYSTANDER, str(PERIOD), str(seconds)]


def reported(logs: str, tag: str) -> Any:
    """The JSON an agent printed after ``tag``, or None."""
    for line in logs.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    return None


def zone2_peak_memory(container_id: str) -> int | None:
    """The most memory zone 2's cgroup used since it started (or since :func:`reset_peak_memory`), in bytes."""
    from pathlib import Path

    for path in (Path(f"/sys/fs/cgroup/memory/docker/{container_id}/memory.max_usage_in_bytes"),
                 Path(f"/sys/fs/cgroup/memory/system.slice/docker-{container_id}.scope/memory.max_usage_in_bytes"),
                 Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.peak"),
                 Path(f"/sys/fs/cgroup/docker/{container_id}/memory.peak")):
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def reset_peak_memory(container_id: str) -> None:
    """Start counting zone 2's peak afresh (cgroup v1's max_usage_in_bytes takes a write; v2's peak cannot)."""
    from pathlib import Path

    for path in (Path(f"/sys/fs/cgroup/memory/docker/{container_id}/memory.max_usage_in_bytes"),
                 Path(f"/sys/fs/cgroup/memory/system.slice/docker-{container_id}.scope/memory.max_usage_in_bytes")):
        try:
            path.write_text("0")
            return
        except OSError:
            continue
