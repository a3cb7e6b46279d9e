from __future__ import annotations

import pytest

from fleetd.zone2.handles import BadHandle, Redactor, handles_in, request_handles, safe_path, substitute


def test_handles() -> None:
    assert handles_in("Bearer $CRED{openai}") == {"openai"}
    assert handles_in("no handle") == set()
    assert request_handles([("x-api-key", "$CRED{a}"), ("x", "$CRED{b}")], "key=%24CRED%7Bc%7D") == {"a", "b", "c"}
    for bad in ("$CRED{", "$CRED{}", "$CRED{a b}", "Bearer $CRED{openai"):
        with pytest.raises(BadHandle):
            handles_in(bad)


def test_substitute() -> None:
    assert substitute("Bearer $CRED{a}", {"a": "sk-1"}) == "Bearer sk-1"


@pytest.mark.parametrize("target", ["/v1/chat/completions", "/v1/x?key=$CRED{a}", "/", "/a%20b"])
def test_safe_paths(target: str) -> None:
    assert safe_path(target)[0].startswith("/")


@pytest.mark.parametrize(
    "target",
    ["http://evil/x", "evil:443", "//evil/x", "/a/../../x", "/a/%2e%2e/x", "/./x", "/a\\b", "/a%00", "/%2fevil/x", "*"],
)
def test_unsafe_paths(target: str) -> None:
    with pytest.raises(BadHandle):
        safe_path(target)


def test_redactor_across_chunks() -> None:
    redactor = Redactor(["sk-SECRET"])
    chunks = (b"error: key sk-SE", b"CRET is invalid; sk-", b"SECRET!")
    out = b"".join(redactor.feed(c) for c in chunks) + redactor.flush()
    assert out == b"error: key [REDACTED] is invalid; [REDACTED]!"


def test_redactor_passes_ordinary_bytes_at_once() -> None:
    redactor = Redactor(["sk-SECRET"])
    assert redactor.feed(b"data: hello\n\n") == b"data: hello\n\n"  # nothing held back: streaming stays live
    assert redactor.feed(b"ends with sk") == b"ends with "
    assert redactor.flush() == b"sk"
