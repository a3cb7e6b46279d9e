"""Test hygiene: no file under tests/ imports from a test module (one whose name starts with ``test_``).

Helpers shared by several test modules live in modules pytest does not collect (tests/unit/loopback.py,
tests/integration/sdk_fixtures.py, ...), and shared fixtures in a conftest.py: a fixture imported from another
test module is a second definition of it, with its own cache even at session scope.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def is_test_module(dotted: str) -> bool:
    return dotted.rsplit(".", 1)[-1].startswith("test_")


def imports_of_test_modules(source: str, package: str) -> list[tuple[int, str]]:
    """The (line, module) of each import of a test module of this repository's tests package in ``source``, a
    module of ``package`` (for relative imports). Modules outside the tests package (``aiohttp.test_utils``)
    are not this rule's business."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names
                      if a.name.split(".")[0] == "tests" and is_test_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module.split(".")[0] != "tests":
                continue
            if is_test_module(module):
                found.append((node.lineno, module))
            else:  # from tests.unit import test_providers
                found += [(node.lineno, f"{module}.{a.name}") for a in node.names if is_test_module(a.name)]
    return found


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("from tests.unit.test_zone2_proxy import serve", ["tests.unit.test_zone2_proxy"]),
        ("import tests.unit.test_providers", ["tests.unit.test_providers"]),
        ("import tests.unit.test_providers as p", ["tests.unit.test_providers"]),
        ("from tests.unit import test_providers, loopback", ["tests.unit.test_providers"]),
        ("from .test_zone2_metering import Rig", ["tests.unit.test_zone2_metering"]),
        ("from . import test_zone2_metering", ["tests.unit.test_zone2_metering"]),
        ("from ..integration.test_zone2_sdk import SdkBench", ["tests.integration.test_zone2_sdk"]),
        ("def f():\n    from tests.integration.test_zone2_sdk import bench", ["tests.integration.test_zone2_sdk"]),
        ("from tests.unit.loopback import serve\nfrom tests.unit import metering_rig", []),
        ("from .provider_calls import classify", []),
        ("from aiohttp.test_utils import TestClient", []),
        ("import test_something_else_installed", []),
        ("from fleetd.zone2 import test_mode", []),
    ],
)
def test_the_check_finds_imports_of_test_modules_in_every_form(source: str, bad: list[str]) -> None:
    assert [module for _, module in imports_of_test_modules(source, "tests.unit")] == bad


def test_no_test_module_is_imported_by_another_file_under_tests() -> None:
    files = sorted(TESTS.rglob("*.py"))
    assert len(files) > 40 and Path(__file__).resolve() in files  # the scan sees the tree, this file included
    offences = []
    for path in files:
        package = ".".join(path.relative_to(REPO).parent.parts)
        for line, module in imports_of_test_modules(path.read_text(), package):
            offences.append(f"{path.relative_to(REPO)}:{line}: imports {module}")
    assert not offences, "move shared helpers to a module not named test_* (fixtures to conftest.py):\n" + "\n".join(
        offences)
