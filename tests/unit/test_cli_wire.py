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


def test_shell_completion_as_the_readme_says() -> None:
    """README: eval "$(_FLEETD_COMPLETE=bash_source fleetd)"; the script asks fleetd itself for completions."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("fleetd"))
    for shell in ("bash", "zsh", "fish"):
        script = subprocess.run([exe], env={**os.environ, "_FLEETD_COMPLETE": f"{shell}_source"},
                                capture_output=True, text=True, check=True).stdout
        assert "_FLEETD_COMPLETE" in script, shell
    words = subprocess.run([exe], env={**os.environ, "_FLEETD_COMPLETE": "bash_complete", "COMP_WORDS": "fleetd sp",
                                       "COMP_CWORD": "1"}, capture_output=True, text=True, check=True).stdout
    assert "spawn" in words
