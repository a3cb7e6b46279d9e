from __future__ import annotations

import json

import pytest

from cli.wire import dumps, loads

SAMPLES = [
    {"image": "fleetd/agent-python", "command": ["sh", "-c", 'echo "hi" \\ \n\t'], "ttl": 5, "cpus": "0.25"},
    {"nested": {"a": [1, 2.5, None, True, False]}, "unicode": "héllo ☃", "empty": {}, "list": []},
    [], "plain", 0, -3, 1.5, None, True,
]


@pytest.mark.parametrize("value", SAMPLES)
def test_round_trip_matches_the_json_module(value: object) -> None:
    assert json.loads(dumps(value)) == value
    assert loads(json.dumps(value)) == value
    assert loads(json.dumps(value, indent=2).encode()) == value


@pytest.mark.parametrize("text", ["", "{", '{"a": 1} x', "nope"])
def test_bad_documents(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)
