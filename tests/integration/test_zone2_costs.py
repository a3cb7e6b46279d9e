"""Zone 2's cost tracker with the official SDKs inside agent containers, on the real engine.

Spend per API (plain and streaming) is checked against the usage each SDK reports
and the built-in prices; caps hold under 50 concurrent streams; settled spend
survives a SIGKILL of zone 2; the breaker keeps a 429-only upstream's traffic to
the threshold plus one probe per open window; retries honour Retry-After and
never retry other 4xx.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.integration.harness import wait_for
from tests.integration.sdk_fixtures import SdkBench, run_sdk_agent

CONFIG = """
[breaker]
threshold = 3
window = 30
open_seconds = 2
max_open_seconds = 8

[retry]
max_retries = 2
base = 0.05
cap = 4
"""
# gpt-4o-mini: $0.15 input, $0.075 cached, $0.60 output per 1M tokens; claude-sonnet-4-5: $3 input, $15 output.
GPT_4O_MINI = (0.15, 0.60)
CLAUDE_SONNET_45 = (3.0, 15.0)
TEXT_EMBEDDING_3_SMALL = (0.02, 0.0)

SPEND_SCRIPT = """
import json
from openai import OpenAI
from anthropic import Anthropic
def emit(kind, **fields):
    print(json.dumps({"kind": kind, **fields}), flush=True)
oa = OpenAI(api_key="$CRED{openai}", max_retries=0, timeout=30)
an = Anthropic(api_key="$CRED{anthropic}", max_retries=0, timeout=30)
M = [{"role": "user", "content": "tell the fleet a story"}]
r = oa.chat.completions.create(model="gpt-4o-mini", messages=M, max_tokens=8)
emit("chat", input=r.usage.prompt_tokens, output=r.usage.completion_tokens)
chunks = list(oa.chat.completions.create(model="gpt-4o-mini", messages=M, max_tokens=10, stream=True))
emit("chat_stream", usage_seen=any(c.usage is not None for c in chunks),
     empty_choices=sum(1 for c in chunks if not c.choices), text="".join(
         c.choices[0].delta.content or "" for c in chunks if c.choices))
r = oa.responses.create(model="gpt-4o-mini", input="tell the fleet a story", max_output_tokens=6)
emit("responses", input=r.usage.input_tokens, output=r.usage.output_tokens)
# a continuation: OpenAI (here the simulator) reads the first response's input and output again
r2 = oa.responses.create(model="gpt-4o-mini", previous_response_id=r.id, input="go on", max_output_tokens=5)
emit("responses_continued", input=r2.usage.input_tokens, output=r2.usage.output_tokens, previous=r.id, id=r2.id)
done = None
for event in oa.responses.create(model="gpt-4o-mini", input="tell the fleet a story", max_output_tokens=7,
                                 stream=True):
    if event.type == "response.completed":
        done = event.response.usage
emit("responses_stream", input=done.input_tokens, output=done.output_tokens)
m = an.messages.create(model="claude-sonnet-4-5", max_tokens=9, messages=M)
emit("messages", input=m.usage.input_tokens, output=m.usage.output_tokens)
with an.messages.stream(model="claude-sonnet-4-5", max_tokens=11, messages=M) as s:
    final = s.get_final_message()
emit("messages_stream", input=final.usage.input_tokens, output=final.usage.output_tokens)
e = oa.embeddings.create(model="text-embedding-3-small", input=["tell the fleet", "a story"])
emit("embeddings", input=e.usage.prompt_tokens, vectors=len(e.data), dims=len(e.data[0].embedding))
emit("done")
"""

CONCURRENT_SCRIPT = """
import json, concurrent.futures
import openai
from openai import OpenAI
def emit(kind, **fields):
    print(json.dumps({"kind": kind, **fields}), flush=True)
client = OpenAI(api_key="$CRED{openai}", max_retries=2, timeout=60)
def one(i):
    try:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="pricey-test", messages=[{"role": "user", "content": "go"}], max_tokens=16, stream=True)
            if c.choices)
        return "ok" if text else "empty"
    except openai.RateLimitError as exc:
        return exc.body.get("type") if isinstance(exc.body, dict) else str(exc.body)
with concurrent.futures.ThreadPoolExecutor(50) as pool:
    results = list(pool.map(one, range(50)))
emit("results", ok=results.count("ok"), budget_exceeded=results.count("budget_exceeded"),
     other=[r for r in results if r not in ("ok", "budget_exceeded")])
emit("done")
"""

STORM_SCRIPT = """
import json, time, concurrent.futures
import openai
from openai import OpenAI
def emit(kind, **fields):
    print(json.dumps({"kind": kind, **fields}), flush=True)
M = [{"role": "user", "content": "x"}]
client = OpenAI(api_key="$CRED{openai}", timeout=30)  # the SDK's default retries (2), as users run it
outcomes = []
start = time.monotonic()
while time.monotonic() - start < 7:
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=M, max_tokens=4)
        outcomes.append("ok")
    except openai.APIStatusError as exc:
        outcomes.append(f"{exc.status_code}:{(exc.body or {}).get('type') if isinstance(exc.body, dict) else ''}")
emit("storm", outcomes=outcomes, seconds=time.monotonic() - start)
print("READY-FOR-RECOVERY", flush=True)
import os
while not os.path.exists("/tmp/go"):  # the test heals the upstream, then says go
    time.sleep(0.05)
emit("recovered_wait", _=0)
"""

HALF_OPEN_SCRIPT = """
import json, time, concurrent.futures
import openai
from openai import OpenAI
def emit(kind, **fields):
    print(json.dumps({"kind": kind, **fields}), flush=True)
M = [{"role": "user", "content": "x"}]
client = OpenAI(api_key="$CRED{openai}", max_retries=0, timeout=30)
def call(_=None):
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=M, max_tokens=4)
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code
trip = [call() for _ in range(3)]          # three 429s: the circuit opens for 2 s
open_now = call()                          # fails fast
time.sleep(2.3)
with concurrent.futures.ThreadPoolExecutor(20) as pool:
    burst = list(pool.map(call, range(20)))  # half-open: exactly one goes through
after = call()
emit("half_open", trip=trip, open_now=open_now, burst=sorted(burst), after=after)
emit("done")
"""

RETRY_SCRIPT = """
import json, time
import openai
from openai import OpenAI
def emit(kind, **fields):
    print(json.dumps({"kind": kind, **fields}), flush=True)
M = [{"role": "user", "content": "x"}]
client = OpenAI(api_key="$CRED{openai}", max_retries=0, timeout=30)
import sys
step = sys.argv[1]
start = time.monotonic()
try:
    client.chat.completions.create(model="gpt-4o-mini", messages=M, max_tokens=4)
    status = 200
except openai.APIStatusError as exc:
    status = exc.status_code
emit("retry", step=step, status=status, seconds=time.monotonic() - start)
emit("done")
"""


@pytest.fixture(scope="module")
def bench(engine: docker.DockerClient) -> Iterator[SdkBench]:
    b = SdkBench(engine, config=CONFIG)
    try:
        b.sim("llm", "/sim/config", {"chunk_delay_ms": 5})
        yield b
    finally:
        b.close()


def budget(bench: SdkBench, agent_id: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(bench.daemon.cli("budget", agent_id, "--json").stdout)
    return result


def cost(tokens: tuple[int, int], price: tuple[float, float]) -> float:
    return (tokens[0] * price[0] + tokens[1] * price[1]) / 1e6


def test_spend_of_plain_and_streaming_calls_of_each_api(bench: SdkBench, sdk_image: str) -> None:
    _, out = run_sdk_agent(bench, sdk_image, SPEND_SCRIPT)
    assert out["chat_stream"]["text"]
    assert not out["chat_stream"]["usage_seen"] and out["chat_stream"]["empty_choices"] == 0  # not asked: hidden
    expected = sum(cost((out[k]["input"], out[k]["output"]), GPT_4O_MINI)
                   for k in ("chat", "responses", "responses_continued", "responses_stream"))
    expected += cost((5, 10), GPT_4O_MINI)  # the chat stream: the simulator counts 5 input words
    expected += sum(cost((out[k]["input"], out[k]["output"]), CLAUDE_SONNET_45)
                    for k in ("messages", "messages_stream"))
    assert out["embeddings"] == {"input": 5, "vectors": 2, "dims": 8}  # the SDK asked for base64 and decoded it
    expected += cost((5, 0), TEXT_EMBEDDING_3_SMALL)
    agent_id = next(a["id"] for a in bench.daemon.agents() if a["role"] == "worker" and a["state"] == "exited")
    line = budget(bench, agent_id)
    assert line["spent_today_usd"] == pytest.approx(expected, abs=1e-9)
    assert line["spent_month_usd"] == pytest.approx(expected, abs=1e-9)
    assert line["llm_calls"] == 8 and line["reserved_usd"] == 0
    assert (line["daily_cap_usd"], line["monthly_cap_usd"], line["max_llm_calls"]) == (50.0, 200.0, None)
    for key in ("spent_today_usd", "spent_month_usd", "reserved_usd", "daily_cap_usd", "monthly_cap_usd",
                "llm_calls", "max_llm_calls"):
        assert key in line
    table = bench.daemon.cli("budget", agent_id).stdout
    assert agent_id in table and "/ $50.0000" in table
    # The continuation read 2 + 6 tokens from upstream beyond its own 2; its reservation covered them.
    first, continued = out["responses"], out["responses_continued"]
    assert continued["input"] == first["input"] + first["output"] + 2
    with contextlib.closing(sqlite3.connect(bench.daemon.state_dir / "zone2" / "ledger.db")) as ledger:
        rows = dict(ledger.execute("SELECT response_id, context_tokens FROM calls WHERE response_id IS NOT NULL"))
        reserved, charged = ledger.execute("SELECT reserved_nusd, cost_nusd FROM calls WHERE response_id = ?",
                                        (continued["id"],)).fetchone()
    assert rows[continued["previous"]] == first["input"] + first["output"]
    assert rows[continued["id"]] == continued["input"] + continued["output"]
    assert charged <= reserved


def test_fifty_concurrent_streams_stay_within_a_small_cap_and_spend_survives_zone2_sigkill(
        bench: SdkBench, sdk_image: str) -> None:
    bench.daemon.cli("price", "set", "pricey-test", "--input-per-mtok", "0.001", "--output-per-mtok", "100",
                     "--max-output-tokens", "64")
    agent_id = bench.daemon.spawn("--role", "worker", "--daily-usd", "0.01", sdk_image, "python3", "-c",
                                  CONCURRENT_SCRIPT)
    bench.daemon.wait_state(agent_id, "exited", timeout=120)
    logs = bench.daemon.logs(agent_id)
    results = next(json.loads(line) for line in logs.splitlines() if '"results"' in line)
    assert results["other"] == [], logs
    line = budget(bench, agent_id)
    cap, one_call = 0.01, 16 * 100 / 1e6  # 16 output tokens at $100/M
    assert line["spent_today_usd"] <= cap
    assert line["spent_today_usd"] > cap - 2 * one_call  # close to the cap: reservations were released
    assert results["ok"] == line["llm_calls"] == 6 and results["budget_exceeded"] == 44
    assert line["reserved_usd"] == 0
    refusals = [e for e in bench.daemon.events(agent_id) if e["type"] == "budget_exceeded"]
    assert len(refusals) == 1  # one event, not 44

    # SIGKILL zone 2: it comes back with the same settled spend, and the cap still holds.
    before = budget(bench, agent_id)
    bench.engine.containers.get(f"fleetd-{bench.daemon.instance}-zone2").kill(signal="SIGKILL")
    wait_for(lambda: bench.daemon.api.call("GET", "/v1/status")["zone2"]["restarts"] >= 1, 20, what="restart")
    wait_for(lambda: bench.daemon.cli("budget", agent_id, "--json", check=False).returncode == 0, 20,
             what="zone 2 answering")
    after = budget(bench, agent_id)
    assert (after["spent_today_usd"], after["llm_calls"]) == (before["spent_today_usd"], before["llm_calls"])
    # SIGKILL the daemon too: zone 2 keeps the ledger, the restarted daemon reports the same spend.
    bench.daemon.kill9()
    bench.daemon.start()
    again = budget(bench, agent_id)
    assert (again["spent_today_usd"], again["llm_calls"]) == (before["spent_today_usd"], before["llm_calls"])


def test_a_429_storm_reaches_the_upstream_only_threshold_plus_one_probe_per_window(
        bench: SdkBench, sdk_image: str) -> None:
    bench.sim("llm", "/sim/config", {"rate_limit": 10**6, "retry_after": 0})
    before = bench.sim("llm", "/sim/stats")["by_status"].get("429", 0)
    try:
        agent_id = bench.daemon.spawn("--role", "worker", sdk_image, "python3", "-c", STORM_SCRIPT)
        wait_for(lambda: "READY-FOR-RECOVERY" in bench.daemon.logs(agent_id), 60, what="storm over")
        upstream_429s = bench.sim("llm", "/sim/stats")["by_status"].get("429", 0) - before
    finally:
        bench.sim("llm", "/sim/config", {"rate_limit": 0, "retry_after": 1})
    storm = next(json.loads(line) for line in bench.daemon.logs(agent_id).splitlines() if '"storm"' in line)
    events = [e for e in bench.daemon.events(agent_id) if e["type"].startswith("circuit_")]
    probes = sum(1 for e in events if e["type"] == "circuit_half_open")
    opened = [e for e in events if e["type"] == "circuit_open"]
    assert upstream_429s == 3 + probes, (upstream_429s, events, storm)
    assert len(opened) == 1 + probes  # every probe failed and reopened it
    assert [e["data"]["open_seconds"] for e in opened][:3] == [2, 4, 8][:len(opened)]  # doubling
    assert all(o.startswith(("429", "503")) for o in storm["outcomes"])
    assert any(o == "503:circuit_open" for o in storm["outcomes"])
    bench.daemon.cli("stop", agent_id, "--grace", "1")


def test_half_open_admits_exactly_one_of_twenty_concurrent_calls(bench: SdkBench, sdk_image: str) -> None:
    bench.sim("llm", "/sim/config", {"rate_limit": 3, "retry_after": 30, "latency_ms": 0})
    agent_id = bench.daemon.spawn("--role", "worker", sdk_image, "python3", "-c", HALF_OPEN_SCRIPT)
    # After the three 429s (Retry-After 30 > the retry cap: handed back, not waited for), slow the upstream so
    # that the whole burst arrives while the probe is in flight.
    wait_for(lambda: any(e["type"] == "circuit_open" for e in bench.daemon.events(agent_id)), 30, what="open")
    bench.sim("llm", "/sim/config", {"latency_ms": 1500})
    try:
        bench.daemon.wait_state(agent_id, "exited", timeout=60)
    finally:
        bench.sim("llm", "/sim/config", {"latency_ms": 0, "retry_after": 1})
    out = next(json.loads(line) for line in bench.daemon.logs(agent_id).splitlines() if '"half_open"' in line)
    assert out["trip"] == [429, 429, 429] and out["open_now"] == 503
    assert out["burst"] == [200] + [503] * 19
    assert out["after"] == 200


FAIL_FAST_SCRIPT = """
import json, time
import anthropic, openai
def emit(kind, **fields):
    print(json.dumps({"kind": kind, **fields}), flush=True)
M = [{"role": "user", "content": "x"}]
trip = openai.OpenAI(api_key="$CRED{openai}", max_retries=0, timeout=30)
for _ in range(3):  # three 429s (Retry-After 30: handed back, not waited for) open the circuit
    try:
        trip.chat.completions.create(model="gpt-4o-mini", messages=M, max_tokens=4)
    except openai.APIStatusError:
        pass
def timed(call, errors):
    start = time.monotonic()
    try:
        call()
        status = 200
    except errors as exc:
        status = exc.status_code
    return status, time.monotonic() - start
# The SDKs at their default settings (2 retries, Retry-After honoured up to 60 s).
oa, an = openai.OpenAI(api_key="$CRED{openai}"), anthropic.Anthropic(api_key="$CRED{anthropic}")
emit("fail_fast", openai=timed(lambda: oa.chat.completions.create(model="gpt-4o-mini", messages=M, max_tokens=4),
                               openai.APIStatusError),
     anthropic=timed(lambda: an.messages.create(model="claude-sonnet-4-5", messages=M, max_tokens=4),
                     anthropic.APIStatusError),
     retries=(oa.max_retries, an.max_retries))
emit("done")
"""


def test_an_open_circuit_fails_fast_for_the_official_sdks_at_their_default_retries(
        bench: SdkBench, sdk_image: str) -> None:
    bench.sim("llm", "/sim/config", {"rate_limit": 3, "retry_after": 30, "latency_ms": 0})
    try:
        _, out = run_sdk_agent(bench, sdk_image, FAIL_FAST_SCRIPT)
    finally:
        bench.sim("llm", "/sim/config", {"rate_limit": 0, "retry_after": 1})
    result = out["fail_fast"]
    assert result["retries"] == [2, 2]  # the SDKs' defaults: they would retry a plain 503
    for sdk in ("openai", "anthropic"):
        status, seconds = result[sdk]
        # Without x-should-retry: false each SDK slept on Retry-After (2 s here) twice before giving up.
        assert status == 503 and seconds < 1.0, (sdk, result)


def test_other_4xx_are_not_retried_and_retry_after_is_honoured(bench: SdkBench, sdk_image: str) -> None:
    stats = bench.sim("llm", "/sim/stats")["requests"]
    bench.sim("llm", "/sim/config", {"fail": 1, "fail_status": 400})
    _, out = run_sdk_agent(bench, sdk_image, RETRY_SCRIPT.replace("sys.argv[1]", "'bad-request'"))
    assert out["retry"]["status"] == 400
    assert bench.sim("llm", "/sim/stats")["requests"] == stats + 1  # one attempt only
    bench.sim("llm", "/sim/config", {"rate_limit": 1, "retry_after": 2})
    _, out = run_sdk_agent(bench, sdk_image, RETRY_SCRIPT.replace("sys.argv[1]", "'retry-after'"))
    assert out["retry"]["status"] == 200  # zone 2 waited the upstream's Retry-After and tried again
    assert out["retry"]["seconds"] >= 2.0
    assert bench.sim("llm", "/sim/stats")["requests"] == stats + 3
    time.sleep(0)  # (no timing upper bound asserted: shared machines are noisy)


def test_price_set_ls_rm_from_the_cli_with_a_slash_in_the_model_id(bench: SdkBench) -> None:
    """Gateway-style ids (`openrouter/model`) are one path segment to the API; bad input is a one-line error."""
    model = "openrouter/test-model-7b"
    out = bench.daemon.cli("price", "set", model, "--input-per-mtok", "0.5", "--output-per-mtok", "1.5").stdout
    assert out.strip() == f"{model}: $0.5/M input, $1.5/M output"
    listed = {p["model"]: p for p in json.loads(bench.daemon.cli("price", "ls", "--json").stdout)}
    assert listed[model]["origin"] == "price set" and listed[model]["output"] == 1.5
    assert bench.daemon.cli("price", "rm", model).stdout.strip() == model
    assert model not in {p["model"] for p in json.loads(bench.daemon.cli("price", "ls", "--json").stdout)}
    again = bench.daemon.cli("price", "rm", model, check=False)
    assert again.returncode != 0 and "no price set" in again.stderr and "Traceback" not in again.stderr
    bad = bench.daemon.cli("price", "set", model, "--input-per-mtok", "-1", "--output-per-mtok", "1", check=False)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    bench.daemon.cli("price", "set", model, "--input-per-mtok", "3", "--output-per-mtok", "15",
                     "--long-context-above", "200000", "--long-context-input-per-mtok", "6",
                     "--long-context-output-per-mtok", "22.5", "--priority-multiplier", "2.5",
                     "--max-input-tokens", "1000000", "--fast-multiplier", "2", "--us-inference-multiplier", "1.1")
    listed = {p["model"]: p for p in json.loads(bench.daemon.cli("price", "ls", "--json").stdout)}
    assert (listed[model]["long_context_threshold"], listed[model]["long_context_input"],
            listed[model]["long_context_output"], listed[model]["priority_multiplier"],
            listed[model]["max_input_tokens"], listed[model]["fast_multiplier"],
            listed[model]["us_inference_multiplier"]) == (200000, 6.0, 22.5, 2.5, 1000000, 2.0, 1.1)
    row = next(line for line in bench.daemon.cli("price", "ls").stdout.splitlines() if line.startswith(model))
    assert "1000000" in row and ">200000: 6/22.5" in row and "priority 2.5x, fast 2x, us 1.1x" in row
    half = bench.daemon.cli("price", "set", model, "--input-per-mtok", "3", "--output-per-mtok", "15",
                            "--long-context-above", "200000", check=False)
    assert half.returncode != 0 and "go together" in half.stderr and len(half.stderr.strip().splitlines()) == 1
    bench.daemon.cli("price", "rm", model)


def test_role_caps_are_set_and_unset_from_the_cli(bench: SdkBench) -> None:
    def role() -> dict[str, Any]:
        return next(r for r in json.loads(bench.daemon.cli("role", "ls", "--json").stdout) if r["name"] == "capped")

    bench.daemon.cli("role", "set", "capped", "--creds", "openai", "--daily-usd", "3", "--max-llm-calls", "7")
    assert (role()["daily_usd"], role()["max_llm_calls"]) == ("3", 7)
    bench.daemon.cli("role", "set", "capped", "--max-llm-calls", "inherit")
    assert (role()["daily_usd"], role()["max_llm_calls"], role()["creds"]) == ("3", None, ["openai"])
    bad = bench.daemon.cli("role", "set", "capped", "--max-llm-calls", "lots", check=False)
    assert bad.returncode == 2 and "--max-llm-calls" in bad.stderr and "Traceback" not in bad.stderr
    bench.daemon.cli("role", "set", "capped", "--allow-unpriced")
    assert role()["allow_unpriced"] is True
    bench.daemon.cli("role", "set", "capped", "--no-allow-unpriced")
    assert role()["allow_unpriced"] is False
    bench.daemon.cli("role", "set", "capped", "--inherit-allow-unpriced")
    assert (role()["allow_unpriced"], role()["daily_usd"]) == (None, "3")
