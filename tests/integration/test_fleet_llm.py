"""Workers that call an LLM with the official openai SDK, through zone 2, against `fleetd llm-sim`: every task's
output and cost; a task's --max-usd refused by zone 2; a pool scaled up and down without stopping a busy agent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import docker
import pytest

from tests.integration.harness import AGENT_IMAGE, wait_for
from tests.integration.sdk_fixtures import SdkBench

MODEL = "task-model"
# One call per task: the question in, the answer and its usage out.
ANSWERING = f"""
import fleetd_agent, openai
client = openai.OpenAI(api_key="$CRED{{openai}}")
fleetd_agent.start_heartbeat()
for task in fleetd_agent.tasks(wait=5):
    reply = client.chat.completions.create(model="{MODEL}", max_tokens=16,
                                           messages=[{{"role": "user", "content": task.input["question"]}}])
    task.complete({{"answer": reply.choices[0].message.content, "tokens": reply.usage.total_tokens}})
"""
# Calls until zone 2 refuses one; the output says how many went through and what the refusal said.
SPENDING = f"""
import fleetd_agent, openai
client = openai.OpenAI(api_key="$CRED{{openai}}")
for task in fleetd_agent.tasks(wait=5):
    calls, refusal = 0, None
    for _ in range(20):
        try:
            client.chat.completions.create(model="{MODEL}", max_tokens=16,
                                           messages=[{{"role": "user", "content": "again"}}])
            calls += 1
        except openai.RateLimitError as exc:
            refusal = {{"code": exc.body.get("code") if isinstance(exc.body, dict) else None,
                        "retry": exc.response.headers.get("x-should-retry")}}
            break
    task.complete({{"calls": calls, "refusal": refusal}})
"""
# Holds each task {{"sleep": S}} seconds.
SLEEPING = """
import time, fleetd_agent
fleetd_agent.start_heartbeat()
for task in fleetd_agent.tasks(wait=5):
    time.sleep(task.input["sleep"])
    task.complete({"slept": task.input["sleep"]})
"""


@pytest.fixture(scope="module")
def bench(engine: docker.DockerClient) -> Iterator[SdkBench]:
    b = SdkBench(engine)
    try:
        # 0.002 USD per output token: a call costs cents, not nano-dollars. Input is cheap, as zone 2 reserves
        # a call's worst case first and bounds its input tokens generously (about a thousand for a short chat).
        b.daemon.cli("price", "set", MODEL, "--input-per-mtok", "10", "--output-per-mtok", "2000",
                     "--max-output-tokens", "64")
        yield b
    finally:
        b.close()


def submit(bench: SdkBench, deployment: str, payload: Any, **options: Any) -> str:
    task: dict[str, Any] = bench.daemon.api.call("POST", "/v1/tasks",
                                                 {"deployment": deployment, "input": payload, **options})
    return str(task["id"])


def task(bench: SdkBench, task_id: str) -> dict[str, Any]:
    result: dict[str, Any] = bench.daemon.api.call("GET", f"/v1/tasks/{task_id}")
    return result


def inspect(bench: SdkBench, name: str) -> dict[str, Any]:
    result: dict[str, Any] = bench.daemon.api.call("GET", f"/v1/deployments/{name}")
    return result


def test_a_hundred_tasks_with_their_outputs_and_costs(bench: SdkBench, sdk_image: str) -> None:
    before = Decimal(str(bench.daemon.api.call("GET", "/v1/budget")["instance"]["spent_today_usd"]))
    bench.daemon.cli("deploy", "answers", "--role", "worker", "--warm", "2", "--max", "4", "--tasks-per-agent",
                     "10", "--heartbeat-interval", "5s", "--memory", "128m", sdk_image, "python3", "-c", ANSWERING)
    ids = [submit(bench, "answers", {"question": f"question {n}"}) for n in range(100)]
    waited = bench.daemon.cli("task", "wait", *ids, "--timeout", "300", check=False, timeout=400)
    assert waited.returncode == 0, waited.stdout[-2000:] + waited.stderr
    done = [task(bench, i) for i in ids]
    assert all(t["state"] == "succeeded" and t["output"]["answer"] for t in done)
    assert all(t["llm_calls"] == 1 and Decimal(str(t["cost_usd"])) > 0 for t in done), done[:3]
    spent = Decimal(str(bench.daemon.api.call("GET", "/v1/budget")["instance"]["spent_today_usd"])) - before
    total = sum(Decimal(str(t["cost_usd"])) for t in done)
    assert abs(total - spent) < Decimal("0.000001"), (total, spent)  # every metered call is some task's
    listed = bench.daemon.cli("task", "ls", "answers").stdout
    assert listed.count("succeeded") == 100
    bench.daemon.cli("deploy", "rm", "answers")


def test_a_task_over_its_max_usd_is_refused_by_zone2(bench: SdkBench, sdk_image: str) -> None:
    bench.daemon.cli("deploy", "capped", "--role", "worker", "--warm", "1", "--max", "1", "--memory", "128m",
                     sdk_image, "python3", "-c", SPENDING)
    # A call costs about 0.03 USD (16 output tokens at 0.002) and reserves its worst case first (about 0.045):
    # 0.1 lets a few through, never twenty.
    capped = submit(bench, "capped", None, max_usd="0.1")
    wait_for(lambda: task(bench, capped)["state"] == "succeeded", 120, what="the capped task to end")
    result = task(bench, capped)
    output = result["output"]
    assert output["refusal"] == {"code": "task_budget_exceeded", "retry": "false"}, output
    refused = [e["data"] for e in bench.daemon.events() if e["type"] == "task_budget_exceeded"]
    assert 1 <= output["calls"] < 20 and result["llm_calls"] == output["calls"], (output, json.dumps(refused))
    assert Decimal(str(result["cost_usd"])) <= Decimal("0.1")
    events = [e for e in bench.daemon.events() if e["type"] == "task_budget_exceeded"]
    assert events and events[-1]["data"]["task"] == capped
    uncapped = submit(bench, "capped", None, max_usd="5")  # the agent's next task has a budget of its own
    wait_for(lambda: task(bench, uncapped)["state"] == "succeeded", 120, what="the second task to end")
    assert task(bench, uncapped)["output"]["calls"] == 20
    bench.daemon.cli("deploy", "rm", "capped")


def test_the_pool_scales_up_then_down_without_stopping_a_busy_agent(bench: SdkBench) -> None:
    bench.daemon.cli("deploy", "elastic", "--min", "0", "--max", "3", "--tasks-per-agent", "1",
                     "--scale-down-window", "5s", "--heartbeat-interval", "5s", "--memory", "64m",
                     AGENT_IMAGE, "python3", "-c", SLEEPING)
    long = submit(bench, "elastic", {"sleep": 75})
    short = [submit(bench, "elastic", {"sleep": 2}) for _ in range(2)]
    wait_for(lambda: inspect(bench, "elastic")["replicas"]["live"] == 3, 60, what="three agents for three tasks")
    holder = wait_for(lambda: task(bench, long)["agent_id"], 30, what="the long task taken")
    wait_for(lambda: all(task(bench, s)["state"] == "succeeded" for s in short), 60, what="the short tasks")
    # Wanted is 1 (the busy agent) from now on: one idle agent goes after the 5 s window, the next 60 s later.
    wait_for(lambda: inspect(bench, "elastic")["replicas"]["live"] == 1, 90, interval=1,
             what="the pool down to its busy agent")
    assert task(bench, long)["state"] == "leased" and task(bench, long)["agent_id"] == holder
    decisions = inspect(bench, "elastic")["decisions"]
    assert [d["drain"] for d in decisions if d["drain"]] and all(holder not in d["drain"] for d in decisions)
    finished = wait_for(lambda: (t := task(bench, long))["state"] == "succeeded" and t, 60, what="the long task")
    assert finished["attempts"] == 1 and finished["agent_id"] == holder  # never stopped, never retried
    drained = [e for e in bench.daemon.events() if e["type"] == "agent_draining"]
    assert holder not in {e["agent_id"] for e in drained if e["time"] < finished["finished_at"]}
    bench.daemon.cli("deploy", "rm", "elastic")
