"""JSON for the CLI's hot path, on the C accelerator module alone.

``import json`` compiles regular expressions at import time; on a ``fleetd
spawn`` timed against ``docker run`` that is a fifth of the start-up. The
stdlib's own C scanner and string encoder do the same job without them.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs the fast path start-up time

if TYPE_CHECKING:
    from typing import Any

try:
    import _json
except ImportError:  # another Python implementation: the plain module is fine
    _json = None  # type: ignore[assignment]


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float
    memo: dict[str, str] = {}


def loads(text: bytes | str) -> Any:
    """Parse a JSON document."""
    data = text.decode() if isinstance(text, bytes) else text
    if _json is None:
        import json

        return json.loads(data)
    start = len(data) - len(data.lstrip())
    try:
        value, end = _json.make_scanner(_Context())(data, start)  # type: ignore[arg-type]
    except StopIteration:
        raise ValueError("not a JSON document") from None
    if data[end:].strip():
        raise ValueError("extra data after the JSON document")
    return value


def dumps(value: Any) -> str:
    """Serialize plain data (dict, list, str, int, float, bool, None) as compact JSON."""
    if _json is None:
        import json

        return json.dumps(value)
    if isinstance(value, str):
        return str(_json.encode_basestring_ascii(value))
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{dumps(str(k))}: {dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
