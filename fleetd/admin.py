"""The administrative verbs: credentials (the vault) and roles, each pushed to zone 2 at once. Split from the
agent lifecycle (fleetd.supervisor): they share the store and zone 2, not the containers."""

from __future__ import annotations

from typing import Any, Protocol

from fleetd.egress import EGRESS_KEYS, egress_settings
from fleetd.errors import InvalidRequest
from fleetd.policy import BUDGET_KEYS, INHERIT, budget_caps
from fleetd.store import Store
from fleetd.units import NAME_PATTERN
from fleetd.vault import Vault


class Zone2Feed(Protocol):
    """What the administrative verbs tell zone 2 (``fleetd.gateway.Zone2``)."""

    async def push_creds(self) -> None: ...

    async def push_all(self) -> None: ...


class Admin:
    def __init__(self, store: Store, vault: Vault, zone2: Zone2Feed) -> None:
        self.store = store
        self.vault = vault
        self.zone2 = zone2

    async def set_credential(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        """Create or rotate a credential; zone 2 uses the new value for its next request."""
        upstream, secret, provider = data.get("upstream"), data.get("secret"), data.get("provider")
        if not isinstance(upstream, str) or not isinstance(secret, str):
            raise InvalidRequest("a credential needs an upstream URL and a secret (both strings)")
        if provider is not None and not isinstance(provider, str):
            raise InvalidRequest("provider must be a string")
        existed = bool(self.vault.records(name))
        record = self.vault.set(name, upstream, secret, provider)
        await self.zone2.push_creds()
        self.store.add_event("credential_rotated" if existed else "credential_set",
                             f"credential {name} -> {record['upstream']} ({record['provider']})", None,
                             {"name": name, "provider": record["provider"]})
        return record

    def credentials(self) -> list[dict[str, Any]]:
        return self.vault.records()

    async def remove_credential(self, name: str) -> None:
        self.vault.remove(name)
        await self.zone2.push_creds()
        self.store.add_event("credential_removed", f"credential {name} removed", None, {"name": name})

    async def set_role(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        if not NAME_PATTERN.fullmatch(name) or name == "default":
            raise InvalidRequest(f"invalid role name {name!r}")
        creds = data.get("creds")
        if creds is not None and (not isinstance(creds, list) or not all(isinstance(c, str) for c in creds)):
            raise InvalidRequest("creds must be a list of credential names")
        unknown = set(data) - {"creds", *BUDGET_KEYS, *EGRESS_KEYS}
        if unknown:
            raise InvalidRequest(f"unknown role fields: {sorted(unknown)}")
        # A key sent as "inherit" is unset: the role's agents take it from the config again.
        inherit = {k for k in (*BUDGET_KEYS, *EGRESS_KEYS) if data.get(k) == INHERIT}
        given = {k: v for k, v in data.items() if k not in inherit}
        caps = budget_caps(given, f"role {name}")
        settings: dict[str, Any] = {k: v for k, v in caps.to_json().items() if v is not None}
        egress = egress_settings(given, f"role {name}")
        settings.update({k: v for k, v in egress.to_json().items() if v is not None})
        settings.update(dict.fromkeys(inherit))
        role = self.store.set_role(name, creds, settings)
        await self.zone2.push_all()  # running agents of this role see the new scope, caps and egress at once
        message = f"role {name}: creds {role['creds']}"
        if "egress" in settings:
            message += f", egress {'inherit' if settings['egress'] is None else ','.join(settings['egress']) or 'none'}"
        self.store.add_event("role_set", message, None, {"name": name, **settings})
        return role
