"""Request targets: the normal form zone 2 sends, and the broadest reading it classifies (fleetd.zone2.targets)."""

from __future__ import annotations

import pytest

from fleetd.zone2.handles import BadHandle
from fleetd.zone2.kinds import unmetered_billable
from fleetd.zone2.targets import normalize_path, path_segments, safe_path
from tests.unit.provider_calls import classify


@pytest.mark.parametrize("target", ["/v1/chat/completions", "/v1/x?key=$CRED{a}", "/", "/a%20b"])
def test_safe_paths(target: str) -> None:
    assert safe_path(target)[0].startswith("/")


@pytest.mark.parametrize(
    "target",
    ["http://evil/x", "evil:443", "//evil/x", "/a/../../x", "/a/%2e%2e/x", "/./x", "/a\\b", "/a%00", "/%2fevil/x", "*",
     # decoded twice by a sloppy upstream, or with servlet path parameters
     "/a/%252e%252e/x", "/a/..;/x", "/a/.;x/b", "/a%255cb", "/a%250d%250ab",
     # characters that must be escaped, and broken escapes
     "/a b", '/a"b', "/a{b}", "/caf\u00e9", "/a%", "/a%2", "/a%zz", "/a\tb"],
)
def test_unsafe_paths(target: str) -> None:
    with pytest.raises(BadHandle):
        safe_path(target)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/v1/chat/%63ompletions", "/v1/chat/completions"),  # unreserved escapes are decoded
        ("/v1/%6D%65ssages", "/v1/messages"),
        ("/%7e%2D%2e%5F", "/~-._"),
        ("/a%3ab/%2fc", "/a%3Ab/%2Fc"),  # reserved ones stay escaped, in upper case
        ("/model/anthropic.claude-v2%3a1/invoke", "/model/anthropic.claude-v2%3A1/invoke"),
        ("/v1/a%20b", "/v1/a%20b"),
        ("/plain/path", "/plain/path"),
    ],
)
def test_normal_form(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal
    assert safe_path(raw + "?q=%63")[0] == normal  # what goes upstream; the query is left as it came
    assert safe_path(raw + "?q=%63")[1] == "q=%63"


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("/v1/chat/completions", ["v1", "chat", "completions"]),
        ("/v1/chat%2Fcompletions", ["v1", "chat", "completions"]),  # %2F read as a separator
        ("/v1/chat/completions;jsessionid=1", ["v1", "chat", "completions"]),  # servlet path parameters
        ("/v1/chat/%2563ompletions", ["v1", "chat", "completions"]),  # decoded twice
        ("//V1//Messages/?x=1#f", ["v1", "messages"]),
    ],
)
def test_broadest_reading(path: str, segments: list[str]) -> None:
    assert path_segments(path) == segments


@pytest.mark.parametrize(
    ("raw", "api"),
    [
        ("/v1/chat/%63ompletions", "openai_chat"),
        ("/v1/%6Dessages", "anthropic_messages"),
        ("/v1/%72esponses", "openai_responses"),
        ("/v1/%65mbeddings", "openai_embeddings"),
        ("/v1/chat%2Fcompletions", "openai_chat"),
        ("/v1/chat%2fcompletions", "openai_chat"),
        ("/v1/chat/completions;x=1", "openai_chat"),
        ("/v1/chat/completions%3Bx=1", "openai_chat"),
        ("/v1/chat/%2563ompletions", "openai_chat"),
        ("/v1/MESSAGES", "anthropic_messages"),
    ],
)
def test_every_spelling_of_a_metered_endpoint_is_metered(raw: str, api: str) -> None:
    """The bypass: these went through the plain (unmetered) path while the upstream read a metered endpoint."""
    path, _ = safe_path(raw)
    assert classify("POST", path) == api


@pytest.mark.parametrize("raw", ["/v1/images/%67enerations", "/v1/%63ompletions", "/v1/audio%2Fspeech",
                                 "/v1/batches;x"])
def test_every_spelling_of_an_unmeterable_endpoint_is_refused(raw: str) -> None:
    path, _ = safe_path(raw)
    assert unmetered_billable("POST", path)


@pytest.mark.parametrize("raw", ["/v1/chat/completions%3F/v1/files",
                                 "/v1beta/models/gemini-2.5-pro:generateContent%3F:countTokens",
                                 "/v1/chat/completions%23/v1/files"])
def test_a_path_an_upstream_may_read_as_a_metered_call_is_not_free(raw: str) -> None:
    """A hop that decodes the path once and reads it again finds a query in %3F: the call was taken for a free file
    upload and relayed unmetered, while such an upstream ran a chat completion."""
    from fleetd.zone2.kinds import free_call

    path, _ = safe_path(raw)
    assert classify("POST", path) is not None
    assert not free_call("POST", path)
