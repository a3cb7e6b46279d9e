"""Deployments and their task queue on the real engine: workers built on the SDK take tasks through zone 2; the
queue survives a SIGKILL of the daemon; a killed worker's task is given back and retried; an agent takes only its
own deployment's tasks."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.integration.harness import AGENT_IMAGE, Daemon, wait_for

# A worker: heartbeats, then each task's input echoed with who ran it; {"sleep": S} holds the task S seconds first.
WORKER = """
import os, time, fleetd_agent
fleetd_agent.start_heartbeat()
for task in fleetd_agent.tasks(wait=5):
    data = task.input if isinstance(task.input, dict) else {}
    if data.get("fail"):
        task.fail("asked to fail", retry=False)
        continue
    time.sleep(data.get("sleep", 0))
    task.complete({"echo": task.input, "agent": os.environ["FLEETD_AGENT_ID"], "attempt": task.attempt})
"""


def deploy(daemon: Daemon, name: str, *options: str) -> None:
    daemon.cli("deploy", name, "--heartbeat-interval", "5s", "--memory", "64m", *options, AGENT_IMAGE, "python3", "-c",
               WORKER)


def submit(daemon: Daemon, deployment: str, payload: Any, *options: str) -> str:
    return daemon.cli("task", "submit", deployment, "--input", json.dumps(payload), *options).stdout.strip()


def task(daemon: Daemon, task_id: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(daemon.cli("task", "inspect", task_id).stdout)
    return result


def inspect(daemon: Daemon, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(daemon.cli("deploy", "inspect", name).stdout)
    return result


def workers(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [a for a in daemon.agents(all_=False) if a["name"].startswith(f"{name}-")]


def test_workers_take_tasks_through_zone2_and_the_pool_follows_the_queue(daemon: Daemon) -> None:
    deploy(daemon, "echo", "--warm", "1", "--max", "3", "--tasks-per-agent", "2")
    wait_for(lambda: inspect(daemon, "echo")["replicas"]["idle"] == 1, 60, what="a warm agent polling the queue")
    ids = [submit(daemon, "echo", {"n": n, "sleep": 1}) for n in range(8)]
    waited = daemon.cli("task", "wait", *ids, "--timeout", "120", check=False)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    done = [task(daemon, i) for i in ids]
    assert [t["state"] for t in done] == ["succeeded"] * 8
    assert [t["output"]["echo"]["n"] for t in done] == list(range(8))
    assert all(t["attempts"] == 1 and t["version"] == "v1" for t in done)
    ran = {t["output"]["agent"] for t in done}
    assert len(ran) >= 2, "8 tasks of 1 s, 2 per agent: the pool grew beyond its one warm agent"
    detail = inspect(daemon, "echo")
    assert any(d["start"] > 0 and d["queued"] > 0 for d in detail["decisions"])
    assert len(workers(daemon, "echo")) <= 3
    listed = daemon.cli("deploy", "ls").stdout
    assert "echo" in listed and "v1" in listed
    daemon.cli("deploy", "rm", "echo")
    wait_for(lambda: not workers(daemon, "echo"), 60, what="the deployment's agents to stop")
    wait_for(lambda: "echo" not in daemon.cli("deploy", "ls").stdout, 30, what="the deployment to be forgotten")


def test_a_killed_workers_task_is_retried_and_a_failed_one_is_not(daemon: Daemon) -> None:
    deploy(daemon, "retry", "--warm", "1", "--max", "2", "--task-attempts", "3")
    long = submit(daemon, "retry", {"sleep": 300})
    holder = wait_for(lambda: (t := task(daemon, long))["state"] == "leased" and t["agent_id"], 60,
                      what="a worker to take the task")
    daemon.cli("kill", holder)
    again = wait_for(lambda: (t := task(daemon, long))["attempts"] == 2 and t["state"] == "leased" and t, 90,
                     what="the task given back and leased again")
    assert again["agent_id"] != holder
    daemon.cli("task", "cancel", long)
    refused = submit(daemon, "retry", {"fail": True})
    result = daemon.cli("task", "wait", refused, "--timeout", "60", check=False)
    assert result.returncode == 1
    failed = task(daemon, refused)
    assert failed["state"] == "failed" and failed["attempts"] == 1 and failed["error"] == "asked to fail"


def test_the_queue_survives_a_sigkill_of_the_daemon(daemon: Daemon) -> None:
    deploy(daemon, "durable", "--warm", "2", "--max", "2")
    wait_for(lambda: inspect(daemon, "durable")["replicas"]["idle"] == 2, 60, what="two warm agents")
    ids = [submit(daemon, "durable", {"n": n, "sleep": 0.5}) for n in range(12)]
    wait_for(lambda: any(task(daemon, i)["state"] == "succeeded" for i in ids), 60, what="the first task done")
    daemon.kill9()
    time.sleep(1)
    daemon.start()
    waited = daemon.cli("task", "wait", *ids, "--timeout", "120", check=False)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    done = [task(daemon, i) for i in ids]
    # The agents ran on through the restart: no lease was lost, none was given twice.
    assert all(t["state"] == "succeeded" and t["attempts"] == 1 for t in done), done


def test_an_agent_takes_only_its_own_deployments_tasks(daemon: Daemon) -> None:
    """A prompt-injected agent outside any deployment, or one completing another's task, is refused."""
    deploy(daemon, "mine", "--warm", "1", "--max", "1")
    wait_for(lambda: inspect(daemon, "mine")["replicas"]["idle"] == 1, 60, what="a warm agent")
    victim = submit(daemon, "mine", {"sleep": 60})
    wait_for(lambda: task(daemon, victim)["state"] == "leased", 60, what="the task taken")
    probe = """
import json, os, sys, urllib.request, urllib.error
base = os.environ["FLEETD_GATEWAY_URL"]
def post(path, body):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
print(json.dumps({"next": post("/fleetd/tasks/next?wait=0", {}),
                  "complete": post("/fleetd/tasks/%s/complete" % sys.argv[1], {"output": "stolen", "attempt": 1}),
                  "fail": post("/fleetd/tasks/%s/fail" % sys.argv[1], {"error": "x", "retry": False})}))
"""
    outsider = daemon.spawn("--ttl", "120", AGENT_IMAGE, "python3", "-c", probe, victim)
    daemon.wait_state(outsider, "exited", 60)
    answers = json.loads(daemon.logs(outsider).strip().splitlines()[-1])
    assert answers == {"next": 409, "complete": 409, "fail": 409}
    assert task(daemon, victim)["state"] == "leased"  # untouched
    daemon.cli("task", "cancel", victim)


def test_task_routes_answer_json_errors(daemon: Daemon) -> None:
    status = daemon.cli("task", "submit", "nowhere", "--input", "1", check=False)
    assert status.returncode != 0 and "no such deployment" in status.stderr
    assert len(status.stderr.strip().splitlines()) == 1
    listed = daemon.cli("deploy", "ls", "--json")
    assert json.loads(listed.stdout) == []
    missing = daemon.cli("task", "inspect", "0123456789abcdef", check=False)
    assert missing.returncode != 0 and "no such task" in missing.stderr
