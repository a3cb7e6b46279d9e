"""docs/openapi.yaml as the tests read it: a validator for any of its schemas, and what a schema declares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonschema.validators import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
DOC_URI = "urn:fleetd:openapi"


def validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    """A JSON Schema validator for ``#/components/schemas/<name>`` with the whole document as context."""
    registry: Registry[Any] = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    schema = {"$ref": f"{DOC_URI}#/components/schemas/{name}"}
    return Draft202012Validator(schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def declared(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Every property a schema declares, through $ref and allOf."""
    schema = resolve(doc, schema)
    props = dict(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        props.update(declared(doc, part))
    return props


def undocumented(doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "") -> list[str]:
    """Keys in ``value`` that the schema does not declare (a response grew a field the docs miss)."""
    schema = resolve(doc, schema)
    if isinstance(value, list) and "items" in schema:
        return [k for item in value for k in undocumented(doc, schema["items"], item, f"{where}[]")]
    props = declared(doc, schema)
    if not isinstance(value, dict) or not props:
        return []
    found = [f"{where}.{key}" for key in value if key not in props]
    for key, sub in props.items():
        if key in value:
            found += undocumented(doc, sub, value[key], f"{where}.{key}")
    return found


def check(doc: dict[str, Any], name: str, value: Any) -> None:
    validator(doc, name).validate(value)
    assert undocumented(doc, {"$ref": f"#/components/schemas/{name}"}, value) == []
