"""Request targets: what zone 2 sends upstream, and every way an upstream might read it. Pure, no I/O.

Metering is fail-closed only if zone 2 classifies the path the upstream will act on. Two things stand in the
way: one path has many spellings (``/v1/chat/%63ompletions`` is ``/v1/chat/completions`` to any server), and
servers differ in how they read the rest (``%2F`` as a separator, ``;params`` dropped, a second decoding). So a
target is normalised once (RFC 3986 6.2.2: escapes of unreserved characters decoded, other escapes in upper
case) and that normal form is what goes upstream; classification reads its *broadest* reading
(:func:`path_segments`), so that a call any upstream would route to a metered endpoint is metered.
"""

from __future__ import annotations

import re
import string
from urllib.parse import unquote

from fleetd.zone2.handles import BadHandle

UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# RFC 3986 pchar (unreserved, sub-delims, ":" and "@"), "/" and "%" of an escape: anything else in a path must
# arrive percent-encoded (a space, quotes, braces, non-ASCII, control characters).
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DECODE_ROUNDS = 3  # a server that decodes twice (or more) reads %2563 as c
_UNSAFE = ("\\", "\0", "\r", "\n")


def _normal_escape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in UNRESERVED else "%" + match.group(1).upper()


def normalize_path(path: str) -> str:
    """``path`` in its normal form: escapes of unreserved characters decoded, the others in upper case.

    Raises BadHandle for a character that may not appear unescaped in a path, or a ``%`` that starts no escape.
    """
    if not _PATH_CHARS.fullmatch(path):
        raise BadHandle("the request path has characters that must be percent-encoded")
    if "%" not in path:
        return path
    if _BAD_ESCAPE.search(path):
        raise BadHandle("the request path has a malformed percent-escape")
    return _ESCAPE.sub(_normal_escape, path)


def fully_decoded(path: str) -> str:
    """``path`` percent-decoded until it stops changing (at most a few rounds): what a server that decodes more
    than once would read."""
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    return path


def path_segments(path: str) -> list[str]:
    """The broadest reading of a request path, for classification: lower case, query and fragment dropped,
    percent-decoded (also ``%2F`` into a separator, and more than once), each segment's ``;params`` dropped (as
    servlet containers route), empty segments (from doubled or trailing slashes) ignored."""
    return path_readings(path)[0]


def path_readings(path: str) -> list[list[str]]:
    """Every way an upstream may read a path's segments: ``path_segments``' reading, and, when decoding brings out
    a ``?`` or ``#`` (``%3F``, ``%23``), the one of a server that decodes the path and then finds its query there.
    A call is metered when any reading is a metered endpoint, and free only when every reading is free."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    decoded = fully_decoded(path)
    readings = [decoded]
    cut = decoded.split("?", 1)[0].split("#", 1)[0]
    if cut != decoded:
        readings.append(cut)
    return [[s.lower() for s in (part.split(";", 1)[0] for part in reading.split("/")) if s] for reading in readings]


def safe_path(raw_target: str) -> tuple[str, str]:
    """Split an origin-form request target into (normalised path, raw query), refusing anything that could
    re-route it.

    Refused: absolute-form (``http://host/…``), authority-form, ``//host`` paths, dot segments (also
    percent-encoded, twice, or with ``;params`` as in ``..;``), backslashes, control characters, characters that
    must be escaped and malformed escapes.
    """
    if not raw_target.startswith("/") or raw_target.startswith("//"):
        raise BadHandle("the request target must be a path starting with a single /")
    path, _, query = raw_target.partition("?")
    path = normalize_path(path)
    decoded = fully_decoded(path)
    if any(ch in decoded for ch in _UNSAFE) or decoded.startswith("//"):
        raise BadHandle("the request path has characters a proxy cannot pass on safely")
    if any(segment.split(";", 1)[0] in (".", "..") for segment in decoded.split("/")):
        raise BadHandle("the request path may not contain dot segments")
    return path, query
