"""The daemon <-> zone 2 contract for agent registrations: one dataclass, written by one side, read by the other."""

from __future__ import annotations

import json

from fleetd.zone2.budget import Caps
from fleetd.zone2.registry import Registration


def test_a_registration_survives_the_wire_both_ways() -> None:
    reg = Registration("a1b2c3d4e5f6", "10.0.0.9", "researcher", frozenset({"openai", "search"}),
                       Caps(5_000_000_000, None, 100), allow_unpriced=True)
    wire = json.loads(json.dumps(reg.to_json()))
    assert wire["creds"] == ["openai", "search"] and wire["monthly_nusd"] is None
    assert Registration.from_json(wire) == reg
    bare = Registration.from_json({"agent_id": "x", "ip": "10.0.0.2"})  # what an older daemon may send
    assert (bare.role, bare.creds, bare.caps, bare.allow_unpriced) == ("default", frozenset(), Caps(), False)
