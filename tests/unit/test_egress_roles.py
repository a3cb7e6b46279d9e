"""Where an agent's egress comes from (issue 18): `role set --egress`, the config's [roles.X], `spawn --egress`
narrowing them; what zone 2 is told (the registration) and what the agent is given (the proxy variables)."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fleetd import errors
from fleetd.admin import Admin
from fleetd.api import init_app
from fleetd.config import load_config
from fleetd.egress import DEFAULT_MAX_BYTES, PRESETS, EgressSettings, agent_egress, egress_settings, parse_egress
from fleetd.gateway import Zone2
from fleetd.models import AgentSpec, iso, utcnow
from fleetd.policy import Policy
from fleetd.services import Services
from fleetd.store import Store
from fleetd.vault import Vault
from fleetd.zone2.contract import Registration

PROXY_VARS = {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"}


def zone2(tmp_path: Path, store: Store, policy: Policy | None = None) -> Zone2:
    return Zone2(tmp_path, store, Vault(store, secrets.token_bytes(32)), SimpleNamespace(instance="t-egress"),  # type: ignore[arg-type]
                 None, None, policy=policy)  # type: ignore[arg-type]


def enabled(settings: EgressSettings) -> bool:
    return settings.policy is not None and settings.policy.enabled


def config_policy(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "fleetd.toml"
    path.write_text(text)
    return load_config(path).policy


def test_the_config_gives_a_role_egress_apart_from_its_spawn_limits(tmp_path: Path) -> None:
    policy = config_policy(tmp_path, '[roles.builder]\nmemory = "1g"\negress = ["@pypi", "docs.python.org"]\n'
                                     'egress_max_bytes = "200m"\n')
    settings = policy.egress["builder"]
    assert settings.policy is not None and settings.policy.to_json() == [*PRESETS["pypi"], "docs.python.org"]
    assert settings.max_bytes == 200 << 20
    for bad, named in (('egress = ["10.0.0.1"]', "roles.r.egress"), ('egress = ["*.com"]', "roles.r.egress"),
                       ('egress_max_bytes = "12"', "roles.r.egress_max_bytes"),
                       ("egress_max_bytes = true", "roles.r.egress_max_bytes")):
        with pytest.raises(errors.InvalidRequest, match=named.replace(".", r"\.")):
            config_policy(tmp_path, f"[roles.r]\n{bad}\n")


def test_role_set_stores_the_expanded_list_none_and_inherit(tmp_path: Path, store: Store) -> None:
    admin = Admin(store, Vault(store, secrets.token_bytes(32)), SimpleNamespace(push_all=_nothing))  # type: ignore[arg-type]
    role = asyncio.run(admin.set_role("builder", {"egress": "@github,example.test:8443", "egress_max_bytes": "500m"}))
    assert role["egress"] == [*PRESETS["github"], "example.test:8443"] and role["egress_max_bytes"] == 500 << 20
    kept = asyncio.run(admin.set_role("builder", {"creds": ["openai"]}))  # settings not named are kept
    assert kept["egress"] == role["egress"] and kept["egress_max_bytes"] == 500 << 20
    assert asyncio.run(admin.set_role("builder", {"egress": "none"}))["egress"] == []  # none: an explicit empty list
    unset = asyncio.run(admin.set_role("builder", {"egress": "inherit", "egress_max_bytes": "inherit"}))
    assert unset["egress"] is None and unset["egress_max_bytes"] is None
    [event] = [e for e in store.events(limit=10) if "egress none" in e["message"]]
    assert event["type"] == "role_set"
    for bad in ({"egress": "https://example.test"}, {"egress": "none,example.test"}, {"egress": 5},
                {"egress_max_bytes": "2t"}, {"egress": "@nope"}):
        with pytest.raises(errors.InvalidRequest):
            asyncio.run(admin.set_role("builder", bad))
    assert store.role("builder")["egress"] is None  # a refused body changes nothing


async def _nothing() -> None:
    return None


def test_an_agents_egress_is_the_roles_narrowed_by_its_spawn(tmp_path: Path, store: Store) -> None:
    policy = config_policy(tmp_path, '[roles.builder]\negress = ["@pypi", "docs.python.org"]\n')
    z = zone2(tmp_path, store, policy)
    assert z.egress("builder").policy == parse_egress("@pypi,docs.python.org")  # the config's
    assert z.egress("builder").max_bytes == DEFAULT_MAX_BYTES
    assert not enabled(z.egress("default"))  # no egress unless a role gives it
    store.set_role("builder", None, {"egress": ["pypi.org"], "egress_max_bytes": 1 << 20})  # role set wins
    assert z.egress("builder").policy == parse_egress("pypi.org") and z.egress("builder").max_bytes == 1 << 20
    store.set_role("builder", None, {"egress": []})  # role set --egress none: nothing, whatever the config says
    assert not enabled(z.egress("builder"))
    store.set_role("builder", None, {"egress": None, "egress_max_bytes": None})  # inherit: the config's again
    narrowed = z.egress("builder", ["pypi.org"], 2 << 30)
    assert narrowed.policy == parse_egress("pypi.org") and narrowed.max_bytes == DEFAULT_MAX_BYTES  # the smaller
    # The role narrowed after the spawn: only the spawn's patterns it still covers stay.
    store.set_role("builder", None, {"egress": ["docs.python.org"]})
    assert not enabled(z.egress("builder", ["pypi.org"]))


def test_agent_egress_takes_each_key_from_the_first_level_that_sets_it() -> None:
    role_set = EgressSettings(None, 5 << 20)
    config = egress_settings({"egress": "a.example.test,*.b.example.test"}, "roles.r")
    found = agent_egress([role_set, config])
    assert str(found.policy) == "a.example.test,*.b.example.test" and found.max_bytes == 5 << 20
    spawn = egress_settings({"egress": "x.b.example.test,a.example.test:443"}, None)
    assert str(agent_egress([role_set, config], spawn).policy) == "x.b.example.test,a.example.test:443"


def test_the_proxy_variables_come_with_an_egress_and_a_wider_spawn_is_refused(tmp_path: Path, store: Store) -> None:
    z = zone2(tmp_path, store, config_policy(tmp_path, '[roles.builder]\negress = ["pypi.org"]\n'))
    assert set(z.agent_env(AgentSpec(image="i", role="builder"))) >= PROXY_VARS
    env = z.agent_env(AgentSpec(image="i", role="builder"))
    assert env["HTTPS_PROXY"] == env["http_proxy"] == "http://zone2:3128" and "zone2" in env["NO_PROXY"].split(",")
    assert not PROXY_VARS & set(z.agent_env(AgentSpec(image="i", role="default")))
    assert not PROXY_VARS & set(z.agent_env(AgentSpec(image="i", role="builder", egress=[])))  # narrowed to none
    with pytest.raises(errors.InvalidRequest, match=r"files\.pythonhosted\.org is not within the egress of role"):
        z.agent_env(AgentSpec(image="i", role="builder", egress=["files.pythonhosted.org"]))
    with pytest.raises(errors.InvalidRequest, match="not within the egress of role 'default' \\(none\\)"):
        z.agent_env(AgentSpec(image="i", egress=["pypi.org"]))


def test_a_spawn_wider_than_its_role_leaves_no_trace(parts: Services) -> None:
    with pytest.raises(errors.InvalidRequest, match=r"--egress: example\.test is not within"):
        asyncio.run(parts.agents.spawn({"image": "img", "egress": "example.test"}))
    assert parts.records.agents() == []


def test_zone2_is_told_each_agents_patterns_and_byte_cap(tmp_path: Path, store: Store) -> None:
    z = zone2(tmp_path, store, config_policy(tmp_path, '[roles.builder]\negress = ["@pypi"]\n'))
    spec = AgentSpec(image="i", role="builder", egress=["pypi.org"], egress_max_bytes=1 << 20)
    store.insert_agent("a1", name="a1", image="i", role="builder", state="running", created_at=iso(utcnow()),
                       deadline=iso(utcnow()), spec=json.dumps(spec.to_json()))
    reg = z.registration("a1", "172.30.0.9")
    assert reg is not None and reg.egress == ("pypi.org",) and reg.egress_max_bytes == 1 << 20
    assert Registration.from_json(json.loads(json.dumps(reg.to_json()))) == reg
    old = {k: v for k, v in reg.to_json().items() if not k.startswith("egress")}  # a daemon from before egress
    assert Registration.from_json(old).egress == ()


def test_a_deployment_wider_than_its_role_is_refused_at_deploy(parts: Services) -> None:
    """Refused when deployed, with a 400, not at each launch of its agents."""
    asyncio.run(parts.admin.set_role("builder", {"egress": "pypi.org"}))

    async def main() -> None:
        async with TestClient(TestServer(init_app(parts))) as client:
            wide = {"image": "img", "role": "builder", "egress": "pypi.org,example.test"}
            async with client.put("/v1/deployments/web", json=wide) as response:
                body = await response.json()
                assert response.status == 400 and "example.test is not within" in body["error"]["message"]
            async with client.put("/v1/deployments/web", json={**wide, "egress": "pypi.org:443"}) as response:
                assert response.status == 201

    asyncio.run(main())
    assert [d.name for d in parts.fleet.deployments.list()] == ["web"]
