#!/usr/bin/env bash
# Set up everything and run the main job: install, build the images, start the
# daemon (as a systemd service when systemd runs this machine), then spawn a
# demo agent with a short TTL and watch fleetd supervise it and expire it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "building images"
fleetd images build

if fleetd status >/dev/null 2>&1; then
  say "fleetd is already running"
elif [ -d /run/systemd/system ]; then
  say "installing and starting fleetd.service"
  install -m 0644 systemd/fleetd.service /etc/systemd/system/fleetd.service
  systemctl daemon-reload
  systemctl enable --now fleetd
else
  say "starting fleetd daemon in the background (no systemd here; log in /var/log/fleetd.log)"
  nohup fleetd daemon >>/var/log/fleetd.log 2>&1 &
  for _ in $(seq 1 30); do fleetd status >/dev/null 2>&1 && break; sleep 1; done
fi
fleetd status

say "spawning a demo agent: 64 MiB, a quarter CPU, 12 s to live, 3 s grace"
agent=$(fleetd spawn --ttl 12 --grace 3 --memory 64m --cpus 0.25 --name "demo-$RANDOM" \
  fleetd/agent-python python3 -c '
import signal, sys, time
def done(*_):
    print("agent: SIGTERM received, saving work and exiting", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
for step in range(1000):
    print(f"agent: working, step {step}", flush=True)
    time.sleep(1)
')
echo "agent $agent"

say "fleetd ps (every 3 s until the deadline passes)"
while state=$(fleetd inspect "$agent" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])') \
      && [ "$state" != exited ]; do
  fleetd ps
  sleep 3
done

say "fleetd ps -a: the agent expired"
fleetd ps -a
say "fleetd logs $agent"
fleetd logs "$agent"
say "fleetd events --agent $agent"
fleetd events --agent "$agent"

say "zone 2: a local LLM simulator stands in for the provider; the key goes into the vault"
docker rm -f fleetd-demo-llm >/dev/null 2>&1 || true
docker run -d --name fleetd-demo-llm --network fleetd-default-egress fleetd/zone2 llm-sim --port 8000 >/dev/null
printf %s "sk-demo-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')" | fleetd cred set demo-llm --upstream http://fleetd-demo-llm:8000 --provider openai
fleetd role set demo --creds demo-llm
fleetd cred ls

say "an agent calls the LLM with the handle \$CRED{demo-llm}; it never sees the key"
agent=$(fleetd spawn --role demo --ttl 60 fleetd/agent-python python3 -c '
import json, os, urllib.request
req = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions",
    data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}).encode(),
    headers={"Authorization": "Bearer $CRED{demo-llm}", "Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(req))
print("agent: the model said:", reply["choices"][0]["message"]["content"][:40], "| usage:", reply["usage"]["total_tokens"], "tokens")
print("agent: keys in my environment:", [v for v in os.environ.values() if v.startswith("sk-")] or "none")
')
while [ "$(fleetd inspect "$agent" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')" != exited ]; do sleep 1; done
fleetd logs "$agent"
fleetd budget "$agent"
echo "the simulator received: $(docker exec fleetd-demo-llm python3 -c 'import json,urllib.request; r=json.load(urllib.request.urlopen("http://127.0.0.1:8000/sim/requests")); print(r[-1]["headers"]["Authorization"][:14] + "…")')"

say "a budget cap: 1 cent a day for role demo, and a price that makes each call cost 0.16 cents"
fleetd price set demo-model --input-per-mtok 0.01 --output-per-mtok 100 --max-output-tokens 64
fleetd role set demo --creds demo-llm --daily-usd 0.01
agent=$(fleetd spawn --role demo --ttl 60 fleetd/agent-python python3 -c '
import json, os, urllib.error, urllib.request
for call in range(1, 20):
    req = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions",
        data=json.dumps({"model": "demo-model", "max_tokens": 16, "messages": [{"role": "user", "content": "go"}]}).encode(),
        headers={"Authorization": "Bearer $CRED{demo-llm}", "Content-Type": "application/json"})
    try:
        usage = json.load(urllib.request.urlopen(req))["usage"]
        print("agent: call", call, "ok,", usage["completion_tokens"], "output tokens", flush=True)
    except urllib.error.HTTPError as exc:
        kind, headers = json.load(exc)["error"]["type"], exc.headers
        print("agent: call", call, exc.code, kind, "| x-should-retry:", headers["x-should-retry"],
              "| Retry-After:", headers["Retry-After"], "s")
        break
')
while [ "$(fleetd inspect "$agent" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')" != exited ]; do sleep 1; done
fleetd logs "$agent"
say "fleetd budget $agent: the spend stopped at the cap"
fleetd budget "$agent"
fleetd events --agent "$agent" | grep budget_exceeded
say "a fleet of workers: a deployment that takes tasks from the queue, one LLM call per task"
fleetd role set demo-worker --creds demo-llm
deployment="demo-workers"
fleetd deploy rm "$deployment" >/dev/null 2>&1 || true
fleetd deploy "$deployment" --role demo-worker --warm 1 --max 3 --tasks-per-agent 2 --memory 64m \
  --heartbeat-interval 10s fleetd/agent-python python3 -c '
import json, os, urllib.request, fleetd_agent
fleetd_agent.start_heartbeat()
for task in fleetd_agent.tasks():
    req = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions",
        data=json.dumps({"model": "demo-model", "max_tokens": 8,
                         "messages": [{"role": "user", "content": task.input["question"]}]}).encode(),
        headers={"Authorization": "Bearer $CRED{demo-llm}", "Content-Type": "application/json"})
    answer = json.load(urllib.request.urlopen(req))["choices"][0]["message"]["content"]
    task.complete({"answer": answer, "agent": fleetd_agent.agent_id()})
'
tasks=()
for n in 1 2 3 4 5 6; do tasks+=("$(fleetd task submit "$deployment" --input "{\"question\": \"task $n\"}")"); done
fleetd task wait "${tasks[@]}" --timeout 2m
fleetd task ls "$deployment"
fleetd deploy ls
say "fleetd deploy inspect $deployment: its scaling decisions, with their inputs"
fleetd deploy inspect "$deployment" | python3 -c 'import json,sys; [print(d["time"], d["reason"]) for d in json.load(sys.stdin)["decisions"]]'
say "a canary: version 2 gets half of the new tasks and fails them; fleetd rolls it back"
fleetd deploy "$deployment" --canary 50 --promote-after 10 --role demo-worker --warm 1 --max 3 \
  --tasks-per-agent 2 --memory 64m --heartbeat-interval 10s fleetd/agent-python python3 -c '
import fleetd_agent
fleetd_agent.start_heartbeat()
for task in fleetd_agent.tasks():
    task.fail("version 2 is broken", retry=False)
'
fleetd deploy ls
for n in $(seq 1 60); do
  fleetd deploy ls | grep -q "canary v2" || break
  fleetd task submit "$deployment" --input "{\"question\": \"canary task $n\"}" >/dev/null
  sleep 1
done
fleetd deploy ls
fleetd events --json | python3 -c 'import json,sys
for line in sys.stdin:
    e = json.loads(line)
    if e["type"].startswith("rollout_"): print(e["time"], e["message"])'
fleetd deploy rm "$deployment"
docker rm -f fleetd-demo-llm >/dev/null
