"""``--format`` templates: a small subset of Go's text/template, as ``docker ps/inspect --format`` take.

Supported: text with actions in it, each action one of

* ``{{.}}``: the whole record, as compact JSON;
* ``{{.Field}}`` or ``{{.a.b}}``: a field, or a path into nested objects (a name that is not
  there matches one that differs only in case: ``{{.State}}`` is ``state``, as docker spells it);
* ``{{json .Field}}`` / ``{{json .}}``: the value as JSON.

Strings print as they are, numbers as numbers, booleans as ``true``/``false``,
null as nothing, objects and lists as compact JSON. ``table TEMPLATE`` (``ps``)
adds a header row, each field's last name in capitals, and aligns cells at tabs. ``\\t`` and ``\\n`` written
in the template become a tab and a newline. A field that does not exist, or
any other syntax (pipelines, ``if``, ``range``...), is an error, not empty output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_PATH = re.compile(r"\.|(?:\.[A-Za-z_][A-Za-z0-9_-]*)+")


class TemplateError(ValueError):
    """The template is not in the supported subset (message: one line)."""


Render = Callable[[dict[str, Any] | None], str]  # None: the header row of a table


def compile_template(template: str) -> Render:
    """A function rendering one record with ``template``; ``TemplateError`` on bad syntax."""
    text = template.replace("\\t", "\t").replace("\\n", "\n")
    pieces: list[str | tuple[bool, list[str]]] = []
    position = 0
    for match in _ACTION.finditer(text):
        pieces.append(text[position:match.start()])
        pieces.append(_action(match.group(1), match.group(0)))
        position = match.end()
    rest = text[position:]
    if "{{" in rest or "}}" in rest:
        raise TemplateError(f"template {template!r}: unmatched {{{{ or }}}}")
    pieces.append(rest)

    def render(record: dict[str, Any] | None) -> str:
        out = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
            elif record is None:  # the header of a table: each field's name
                out.append((piece[1][-1] if piece[1] else "record").upper())
            else:
                as_json, path = piece
                value = lookup(record, path)
                out.append(json.dumps(value, separators=(",", ":")) if as_json else show(value))
        return "".join(out)

    return render


def tabulate(lines: list[str], padding: int = 3) -> list[str]:
    """Align tab-separated cells in columns, as Go's tabwriter does for ``docker ps --format 'table ...'``."""
    rows = [line.split("\t") for line in lines]
    widths: dict[int, int] = {}
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell))
    return ["".join(cell.ljust(widths[i] + padding) for i, cell in enumerate(row[:-1])) + row[-1] for row in rows]


def _action(body: str, whole: str) -> tuple[bool, list[str]]:
    as_json = False
    words = body.split()
    if len(words) == 2 and words[0] == "json":
        as_json, words = True, words[1:]
    if len(words) != 1 or not _PATH.fullmatch(words[0]):
        raise TemplateError(f"template action {whole!r} not supported: use {{{{.field}}}}, {{{{.a.b}}}} "
                            "or {{json .field}}")
    path = [] if words[0] == "." else words[0].split(".")[1:]
    return as_json, path


def lookup(record: Any, path: list[str]) -> Any:
    value = record
    for depth, key in enumerate(path):
        if isinstance(value, dict) and key not in value:  # {{.State}}, as docker's Go fields are spelt
            same = [k for k in value if isinstance(k, str) and k.lower() == key.lower()]
            key = same[0] if len(same) == 1 else key
        if not isinstance(value, dict) or key not in value:
            where = "." + ".".join(path[: depth + 1])
            raise TemplateError(f"template: no field {where}")
        value = value[key]
    return value


def show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
