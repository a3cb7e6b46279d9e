"""Rollouts on the real engine (issue 17): workers that call `fleetd llm-sim` with the official openai SDK through
zone 2, one deployment updated three times.

- v2 fails half its tasks: rolled back before it gets promote-after completions; no new task goes to it afterwards.
- v3 is as good as v1 and 10 % cheaper (9 output tokens a call instead of 10): promoted; v1 drains without a task
  cut (every task succeeds at its first attempt), and a v1 task whose agent is killed after the promotion is retried
  on v1, by the v1 agent kept for it.
- blue-green to v4: the switch loses no task and runs none on both versions.
- v5 with a spend cap below one call: zone 2 refuses its calls (budget_exceeded) and it is rolled back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.integration.harness import wait_for
from tests.integration.sdk_fixtures import SdkBench

MODEL = "rollout-model"
# One LLM call per task (TOKENS output tokens: the version's cost), then a short think (a held task: until the test
# makes /tmp/release in its agent); FLAKY=1 fails the tasks of even number. The output names the version that ran it.
WORKER = f"""
import os, time, fleetd_agent, openai
client = openai.OpenAI(api_key="$CRED{{openai}}")
tokens, flaky, version = int(os.environ["TOKENS"]), os.environ.get("FLAKY") == "1", os.environ["V"]
fleetd_agent.start_heartbeat()
for task in fleetd_agent.tasks(wait=5):
    client.chat.completions.create(model="{MODEL}", max_tokens=tokens,
                                   messages=[{{"role": "user", "content": "task " + str(task.input["n"])}}])
    if task.input.get("hold"):  # until the test releases it (or 10 minutes): a task held across a promotion
        give_up = time.monotonic() + 600
        while not os.path.exists("/tmp/release") and time.monotonic() < give_up:
            time.sleep(0.1)
    time.sleep(task.input.get("think", 0.2))
    if flaky and task.input["n"] % 2 == 0:
        task.fail("version " + version + " cannot do even tasks", retry=False)
    else:
        task.complete({{"version": version, "n": task.input["n"]}})
"""
NAME = "roll"


@pytest.fixture(scope="module")
def bench(engine: docker.DockerClient) -> Iterator[SdkBench]:
    b = SdkBench(engine)
    try:
        b.daemon.cli("price", "set", MODEL, "--input-per-mtok", "10", "--output-per-mtok", "2000",
                     "--max-output-tokens", "64")
        yield b
    finally:
        b.close()


def deploy(bench: SdkBench, image: str, version: int, tokens: int, flaky: bool = False,
           **rollout: Any) -> dict[str, Any]:
    body = {"image": image, "command": ["python3", "-c", WORKER], "role": "worker", "memory": "128m",
            "heartbeat_interval": "5s", "warm": 2, "max": 4, "tasks_per_agent": 5, "task_attempts": 3,
            "env": [f"TOKENS={tokens}", f"V={version}", f"FLAKY={int(flaky)}"], **rollout}
    result: dict[str, Any] = bench.daemon.api.call("PUT", f"/v1/deployments/{NAME}", body)
    return result


def inspect(bench: SdkBench) -> dict[str, Any]:
    result: dict[str, Any] = bench.daemon.api.call("GET", f"/v1/deployments/{NAME}")
    return result


def submit(bench: SdkBench, first: int, count: int, hold: bool = False) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = bench.daemon.api.call(
        "POST", "/v1/tasks/batch", {"deployment": NAME, "tasks": [{"input": {"n": n, "hold": hold}}
                                                                  for n in range(first, first + count)]})
    return tasks


def release(engine: docker.DockerClient, bench: SdkBench, agent_id: str) -> None:
    """Let the held task of ``agent_id`` (and any it takes later) end."""
    container = engine.containers.get(f"fleetd-{bench.daemon.instance}-{agent_id}")
    assert container.exec_run(["touch", "/tmp/release"]).exit_code == 0


def task(bench: SdkBench, task_id: str) -> dict[str, Any]:
    result: dict[str, Any] = bench.daemon.api.call("GET", f"/v1/tasks/{task_id}")
    return result


def finished(bench: SdkBench, ids: list[str], timeout: float = 240) -> list[dict[str, Any]]:
    waited = bench.daemon.cli("task", "wait", *ids, "--timeout", str(int(timeout)), check=False,
                              timeout=timeout + 60)
    assert waited.returncode in (0, 1), waited.stderr  # 1: some did not succeed, which the caller looks at
    return [task(bench, i) for i in ids]


def feed_until(bench: SdkBench, first: int, done: Any, timeout: float = 300) -> tuple[int, list[str]]:
    """Submit batches of ten while ``done(view)`` is false; the next task number and every id submitted."""
    ids: list[str] = []
    give_up = time.monotonic() + timeout
    while not done(inspect(bench)):
        assert time.monotonic() < give_up, inspect(bench)
        if inspect(bench)["queue"]["queued"] < 10:
            ids += [t["id"] for t in submit(bench, first, 10)]
            first += 10
        time.sleep(0.5)
    return first, ids


def rollout_events(bench: SdkBench, kind: str) -> list[dict[str, Any]]:
    return [e for e in bench.daemon.events() if e["type"] == kind]


def test_canary_rolled_back_then_promoted_then_blue_green(bench: SdkBench, sdk_image: str,
                                                          engine: docker.DockerClient) -> None:
    deploy(bench, sdk_image, 1, tokens=10)
    baseline = finished(bench, [t["id"] for t in submit(bench, 0, 20)])
    assert all(t["state"] == "succeeded" and t["output"]["version"] == "1" for t in baseline)

    # v2 fails half its tasks: rolled back early.
    applied = deploy(bench, sdk_image, 2, tokens=10, flaky=True, canary=50, promote_after=30)
    assert applied["rollout"]["phase"] == "canary" and applied["current_version"] == 1
    n, ids = feed_until(bench, 100, lambda view: view["rollout"] is None)
    [rolled] = rollout_events(bench, "rollout_rolled_back")
    assert rolled["data"]["canary"]["finished"] < 30, rolled  # before promote-after: the result was certain
    assert "error rate" in rolled["data"]["reason"] and rolled["data"]["by"] == "fleetd"
    versions = {v["version"]: v for v in inspect(bench)["versions"]}
    assert versions[2]["outcome"] == "rolled_back" and inspect(bench)["current_version"] == 1
    after = submit(bench, n, 20)
    n += 20
    assert all(t["route"] is None for t in after)
    done = finished(bench, [t["id"] for t in after] + ids)
    assert all(t["output"]["version"] == "1" for t in done[:20])  # nothing new went to v2
    late_v2 = [t for t in done if t["version"] == "v2" and t["created_at"] > rolled["time"]]
    assert late_v2 == [], late_v2

    # v3: as good, 10 % cheaper: promoted; v1 drains without cutting a task. Two long v1 tasks are held across
    # the promotion (as long as the promotion takes); one holder is killed after it: that task is retried on v1 (by the
    # other v1 agent, kept for it), never on v3.
    long = submit(bench, n, 2, hold=True)
    n += 2
    holders = [wait_for(lambda t=t: task(bench, t["id"])["agent_id"], 60, what="a long task taken") for t in long]
    assert {task(bench, t["id"])["version"] for t in long} == {"v1"}
    applied = deploy(bench, sdk_image, 3, tokens=9, canary=50, promote_after=10, max_duration_increase=5, max=6)
    assert applied["rollout"]["version"] == 3
    n, ids = feed_until(bench, n, lambda view: view["rollout"] is None)
    [promoted] = rollout_events(bench, "rollout_promoted")
    assert promoted["data"]["canary"]["cost_per_succeeded_usd"] < promoted["data"]["current"]["cost_per_succeeded_usd"]
    assert inspect(bench)["current_version"] == 3
    assert [task(bench, t["id"])["state"] for t in long] == ["leased", "leased"], "promoted within the long tasks"
    bench.daemon.cli("kill", holders[0])
    release(engine, bench, holders[1])  # its task ends; the killed agent's, retried on it, runs through
    retried = wait_for(lambda: (t := task(bench, long[0]["id"]))["state"] in ("succeeded", "failed", "dead") and t,
                       180, what="the killed agent's task to end")
    assert retried["state"] == "succeeded" and retried["attempts"] == 2, retried
    assert retried["version"] == "v1" and retried["output"]["version"] == "1" and retried["agent_id"] == holders[1]
    done = finished(bench, [*ids, long[1]["id"]])
    assert all(t["state"] == "succeeded" and t["attempts"] == 1 for t in done), [
        (t["version"], t["state"], t["error"]) for t in done if t["state"] != "succeeded" or t["attempts"] != 1]
    wait_for(lambda: {v["version"]: v["state"] for v in inspect(bench)["versions"]}.get(1) == "retired", 120,
             what="v1 retired")

    # Blue-green to v4: every task runs once, on one version.
    applied = deploy(bench, sdk_image, 4, tokens=9, strategy="blue-green")
    assert applied["rollout"]["phase"] == "starting" and applied["rollout"]["target"] >= 1
    during = []
    while inspect(bench)["rollout"] is not None:
        during += [t["id"] for t in submit(bench, n, 5)]
        n += 5
        time.sleep(1)
        assert len(during) < 500, inspect(bench)
    # The switch and the end of the rollout may fall within one of the loop's seconds (v3's idle agents drain at
    # once): the tasks submitted after it show that v4 took over.
    after = [t["id"] for t in submit(bench, n, 5)]
    n += 5
    done = finished(bench, during + after)
    assert all(t["state"] == "succeeded" and t["attempts"] == 1 for t in done)
    assert {t["version"] for t in done} <= {"v3", "v4"}
    assert {t["version"] for t in done[len(during):]} == {"v4"}
    assert all(t["output"]["version"] == t["version"][1:] for t in done)
    assert rollout_events(bench, "rollout_switched") and rollout_events(bench, "rollout_finished")

    # A canary with a spend cap below one call's reservation: zone 2 refuses its first call, and it is rolled back.
    deploy(bench, sdk_image, 5, tokens=9, canary=50, canary_max_usd="0.05")
    n, ids = feed_until(bench, n, lambda view: view["rollout"] is None, timeout=120)
    capped = rollout_events(bench, "rollout_rolled_back")[-1]
    assert "spend cap" in capped["message"], capped
    refused = [e for e in bench.daemon.events() if e["type"] == "budget_exceeded"]
    assert refused and refused[-1]["data"]["pool"].startswith(f"{NAME}/v5@")  # the version and its creation
    bench.daemon.cli("deploy", "rm", NAME)
