"""A hostile agent against zone 2's meter, from a real container through the real gateway.

Each attack here went through unmetered before: a percent-encoded path that the upstream decodes into a metered
endpoint, an endpoint of an LLM provider zone 2 does not meter, a body with a key twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import docker
import pytest

from tests.integration.zone2_fixtures import AGENT_HTTP, Bench

BODY = json.dumps({"model": "gpt-4o-mini", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
TWICE = '{"model": "gpt-4o-mini", "max_tokens": 1, "max_tokens": 100000, "messages": []}'


@pytest.fixture(scope="module")
def bench(engine: docker.DockerClient) -> Iterator[Bench]:
    b = Bench(engine)
    try:
        b.daemon.cli("role", "set", "capped", "--creds", "openai", "--max-llm-calls", "0", "--daily-usd", "0")
        yield b
    finally:
        b.close()


def attack(bench: Bench, role: str, calls: list[tuple[str, str, str]]) -> list[tuple[str, int, str]]:
    """Run the calls (method, raw target, body) from an agent; return (target, status, error type) of each."""
    script = AGENT_HTTP + f"""
for method, target, body in {calls!r}:
    status, text = call(method, target, AUTH, body)
    try:
        kind = json.loads(text)["error"]["type"]
    except Exception:
        kind = ""
    print("RESULT", json.dumps([target, status, kind]))
"""
    _, out = bench.run_agent(script, role=role)
    return [tuple(json.loads(line.split(" ", 1)[1])) for line in out.splitlines() if line.startswith("RESULT ")]


def test_percent_encoded_metered_paths_are_metered(bench: Bench) -> None:
    before = len(bench.sim_requests("llm"))
    targets = ["/v1/chat/%63ompletions", "/v1/chat%2Fcompletions", "/v1/chat/completions;x=1", "/v1/%6Dessages",
               "/v1/%72esponses", "/v1/%65mbeddings"]
    results = attack(bench, "capped", [("POST", t, BODY) for t in targets])
    assert results == [(t, 429, "max_llm_calls_exceeded") for t in targets]
    assert len(bench.sim_requests("llm")) == before  # nothing reached the upstream


def test_unmetered_endpoints_of_an_llm_provider_are_refused(bench: Bench) -> None:
    before = len(bench.sim_requests("llm"))
    targets = ["/v1/images/%67enerations", "/v1/responses/resp_1/fork", "/v1/some/new/endpoint",
               "/v1beta/models/gemini-9:predict"]
    results = attack(bench, "worker", [("POST", t, BODY) for t in targets] + [("POST", "/v1/chat/completions", TWICE)])
    assert results[:-1] == [(t, 400, "endpoint_not_metered") for t in targets]
    assert results[-1][1:] == (400, "invalid_request_error")  # max_tokens twice
    assert len(bench.sim_requests("llm")) == before


def test_the_provider_kind_is_set_listed_and_kept(bench: Bench) -> None:
    listed = {c["name"]: c for c in json.loads(bench.daemon.cli("cred", "ls", "--json").stdout)}
    assert listed["openai"]["provider"] == "openai"
    assert "PROVIDER" in bench.daemon.cli("cred", "ls").stdout
    bad = bench.daemon.cli("cred", "set", "x", "--upstream", "http://127.0.0.1:9", "--provider", "openia", check=False)
    assert bad.returncode == 2 and "openia" in bad.stderr and "Traceback" not in bad.stderr


def test_gemini_calls_are_metered_through_a_real_gateway(bench: Bench) -> None:
    bench.set_cred("gemini", "AIza-test-key", "llm", provider="gemini")
    bench.daemon.cli("role", "set", "gem", "--creds", "gemini")
    body = json.dumps({"contents": [{"parts": [{"text": "one two three"}]}],
                       "generationConfig": {"maxOutputTokens": 4, "thinkingConfig": {"thinkingBudget": 0}}})
    script = AGENT_HTTP + f"""
H = {{"x-goog-api-key": "$CRED{{gemini}}", "Content-Type": "application/json"}}
for target in ("/v1beta/models/gemini-2.5-flash:generateContent",
               "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
               "/v1beta/models/gemini-2.5-flash:embedContent"):
    status, text = call("POST", target, H, {body!r})
    print("RESULT", json.dumps([target, status, text[:300]]))
"""
    agent_id, out = bench.run_agent(script, role="gem")
    results = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("RESULT ")]
    assert [status for _, status, _ in results] == [200, 200, 400], results
    assert "endpoint_not_metered" in results[2][2]  # a Gemini credential is default-deny
    budget = json.loads(bench.daemon.cli("budget", agent_id, "--json").stdout)
    # two calls of 3 input and 4 output tokens at gemini-2.5-flash's $0.30 / $2.50 per 1M
    assert budget["llm_calls"] == 2
    assert budget["spent_today_usd"] == pytest.approx(2 * (3 * 0.30 + 4 * 2.50) / 1e6, abs=1e-9)
    assert bench.sim_requests("llm")[-1]["headers"]["x-goog-api-key"] == "AIza-test-key"
