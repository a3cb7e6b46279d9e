"""The gateway on loopback: a real aiohttp upstream the test starts, real HTTP, no Docker."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from fleetd.zone2.contract import Registration, Upstream
from fleetd.zone2.proxy import init_gateway
from fleetd.zone2.registry import Registry
from tests.unit.loopback import SECRET, serve, upstream_app

SLASHY = "sk-live/KEY+abc==xyz0123456789"  # a secret with characters that every encoding changes
OTHER_SECRET = "sk-other-SECRET-99"


Check = Callable[[aiohttp.ClientSession, str, list[dict[str, Any]], list[dict[str, Any]]], Awaitable[None]]


def run(check: Check, registered: bool = True) -> None:
    async def main() -> None:
        seen: list[dict[str, Any]] = []
        elsewhere: list[dict[str, Any]] = []
        async with serve(upstream_app(seen)) as upstream, serve(upstream_app(elsewhere)) as other:
            registry = Registry()
            registry.set_creds([Upstream("openai", upstream, SECRET), Upstream("other", other, OTHER_SECRET),
                                Upstream("forbidden", upstream, "sk-not-yours"), Upstream("slashy", upstream, SLASHY)])
            if registered:
                registry.register(Registration("agent1", "127.0.0.1", "default",
                                               frozenset({"openai", "other", "slashy"})))

            async def whois(ip: str) -> Registration | None:
                return None

            async with serve(init_gateway(registry, whois)) as gateway, aiohttp.ClientSession() as client:
                await check(client, gateway, seen, elsewhere)

    asyncio.run(main())


def test_handle_in_bearer_is_swapped_and_sent_to_its_upstream() -> None:
    async def check(client: aiohttp.ClientSession, gw: str, seen: list[Any], elsewhere: list[Any]) -> None:
        headers = {"Authorization": "Bearer $CRED{openai}", "X-Forwarded-Host": "evil", "Host": "evil.example",
                   "X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "PUT", "X-Method-Override": "PATCH"}
        async with client.post(f"{gw}/v1/tools/search?x=1", headers=headers, json={"a": 1}) as r:
            assert r.status == 200
            assert (await r.json())["auth"] == "Bearer [REDACTED]"  # the echo back is redacted
        assert seen[0]["path"] == "/v1/tools/search?x=1"
        assert seen[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
        assert "X-Forwarded-Host" not in seen[0]["headers"]
        # sent with the method it was classified as: no header that asks the upstream for another
        assert not {"x-http-method-override", "x-http-method", "x-method-override"} & {
            h.lower() for h in seen[0]["headers"]}
        assert seen[0]["body"] == '{"a": 1}'
        assert elsewhere == []

    run(check)


def test_handle_in_query_and_custom_header() -> None:
    async def check(client: aiohttp.ClientSession, gw: str, seen: list[Any], elsewhere: list[Any]) -> None:
        async with client.get(f"{gw}/search?key=$CRED{{openai}}&q=a", headers={"X-Custom": "$CRED{openai}"}) as r:
            assert r.status == 200
        assert seen[0]["path"] == f"/search?key={SECRET}&q=a"
        assert seen[0]["headers"]["X-Custom"] == SECRET

    run(check)


def test_no_secret_in_zone2s_log_even_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    async def check(client: aiohttp.ClientSession, gw: str, seen: list[Any], elsewhere: list[Any]) -> None:
        for target in ("/search?key=$CRED{openai}&q=a", "/echo-key", "/redirect", "/compressed/compress"):
            async with client.get(gw + target, headers={"Authorization": "Bearer $CRED{openai}"},
                                  allow_redirects=False) as r:
                await r.read()

    with caplog.at_level(logging.DEBUG):
        run(check)
    assert "/search" in caplog.text  # the calls were logged
    assert SECRET not in caplog.text and quote(SECRET) not in caplog.text


def test_secret_echoed_in_an_error_is_redacted() -> None:
    async def check(client: aiohttp.ClientSession, gw: str, seen: list[Any], elsewhere: list[Any]) -> None:
        async with client.get(f"{gw}/echo-key", headers={"Authorization": "Bearer $CRED{openai}"}) as r:
            text = await r.text()
        assert r.status == 401 and SECRET not in text and "[REDACTED]" in text
        assert r.reason == "Invalid key Bearer [REDACTED]"

    run(check)


def test_a_secret_echoed_in_another_spelling_is_redacted() -> None:
    """An upstream that echoed the URL gave the agent the key percent-encoded (as zone 2 put it in the query), and
    one that echoed Basic credentials gave it in base64."""
    async def check(client: aiohttp.ClientSession, gw: str, seen: list[Any], elsewhere: list[Any]) -> None:
        async with client.get(f"{gw}/echo-forms?key=$CRED{{slashy}}", headers={}) as r:
            echo = (await r.text()).split("\n")
        assert r.status == 200 and len(echo) == 5
        for form in echo:
            assert "[REDACTED]" in form and "c2stbGl2ZS9" not in form and "%2F" not in form.upper(), echo

    run(check)


def test_streaming_passes_through_and_is_redacted() -> None:
    async def check(client: aiohttp.ClientSession, gw: str, seen: list[Any], elsewhere: list[Any]) -> None:
        async with client.get(f"{gw}/stream", headers={"x-api-key": "$CRED{openai}"}) as r:
            first = await r.content.readline()
            assert first == b"data: 0\n"  # arrives before the upstream is done
            rest = await r.read()
        assert SECRET.encode() not in rest and b"[REDACTED]" in rest

    run(check)


def test_redirects_are_not_followed() -> None:
    async def check(client: aiohttp.ClientSession, gw: str, seen: list[Any], elsewhere: list[Any]) -> None:
        async with client.get(f"{gw}/redirect", headers={"Authorization": "Bearer $CRED{openai}"},
                              allow_redirects=False) as r:
            assert r.status == 302
        assert len(seen) == 1

    run(check)


def test_refusals() -> None:
    async def check(client: aiohttp.ClientSession, gw: str, seen: list[Any], elsewhere: list[Any]) -> None:
        cases = [
            ({"Authorization": "Bearer $CRED{nope}"}, 403),
            ({"Authorization": "Bearer $CRED{forbidden}"}, 403),
            ({"Authorization": "Bearer $CRED{openai}", "X-Other": "$CRED{other}"}, 403),
            ({"Authorization": "Bearer $CRED{openai"}, 400),
            ({}, 400),
        ]
        bodies = []
        for headers, status in cases:
            async with client.get(f"{gw}/v1/models", headers=headers) as r:
                assert r.status == status, headers
                bodies.append(await r.json())
        assert bodies[0] == bodies[1]  # unknown and out of scope look the same
        assert seen == [] and elsewhere == []

    run(check)


def test_oversized_body_is_413() -> None:
    async def check(client: aiohttp.ClientSession, gw: str, seen: list[Any], elsewhere: list[Any]) -> None:
        async with client.post(f"{gw}/v1/x", headers={"Authorization": "Bearer $CRED{openai}"},
                               data=io.BytesIO(b"x" * (11 << 20))) as r:
            assert r.status == 413
        assert seen == []

    run(check)


def test_unregistered_address_is_403() -> None:
    async def check(client: aiohttp.ClientSession, gw: str, seen: list[Any], elsewhere: list[Any]) -> None:
        async with client.get(f"{gw}/v1/models", headers={"Authorization": "Bearer $CRED{openai}"}) as r:
            assert r.status == 403
            assert json.loads(await r.text())["error"]["type"] == "unknown_agent"
        assert seen == []

    run(check, registered=False)


def raw(gw: str, request: bytes) -> bytes:
    host, port = gw.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(request)
        return s.recv(65536)


def test_request_target_tricks_are_refused() -> None:
    async def check(client: aiohttp.ClientSession, gw: str, seen: list[Any], elsewhere: list[Any]) -> None:
        auth = b"Authorization: Bearer $CRED{openai}\r\n"
        for target in (b"http://127.0.0.2:9/x", b"//127.0.0.2:9/x", b"/a/../../x", b"/a/%2e%2e/x"):
            reply = await asyncio.to_thread(raw, gw, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
            assert reply.startswith(b"HTTP/1.1 400"), (target, reply[:80])
        assert seen == [] and elsewhere == []

    run(check)


def test_cookies_an_upstream_sets_never_reach_another_agents_calls() -> None:
    """Zone 2 keeps no cookie jar: one agent's session cookie is not replayed on another agent's calls."""

    async def main() -> None:
        seen: list[str | None] = []

        async def login(request: web.Request) -> web.Response:
            seen.append(request.headers.get("Cookie"))
            response = web.json_response({"ok": True})
            response.set_cookie("session", f"of-{request.query['who']}")
            return response

        app = web.Application()
        app.router.add_get("/login", login)
        async with serve(app) as upstream:
            registry = Registry()
            # A host name, not an address: aiohttp's default jar refuses cookies from bare IPs.
            registry.set_creds([Upstream("tool", upstream.replace("127.0.0.1", "localhost"), SECRET)])
            for n in (1, 2):
                registry.register(Registration(f"agent{n}", f"127.0.0.{n}", "default", frozenset({"tool"})))

            async def whois(ip: str) -> Registration | None:
                return None

            async with serve(init_gateway(registry, whois)) as gw:
                for who, source in (("agent1", "127.0.0.1"), ("agent2", "127.0.0.2"), ("agent1", "127.0.0.1")):
                    connector = aiohttp.TCPConnector(local_addr=(source, 0))
                    jar = aiohttp.DummyCookieJar()  # the agent keeps none either: each call stands alone
                    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as c, \
                            c.get(f"{gw}/login?who={who}", headers={"X-Key": "$CRED{tool}"}) as r:
                        assert r.status == 200
                        assert r.cookies["session"].value == f"of-{who}"  # Set-Cookie reaches the agent

        assert seen == [None, None, None]  # nor is any cookie sent upstream for an agent that sent none

    asyncio.run(main())


def test_a_body_compressed_despite_identity_is_decoded_and_redacted_or_refused() -> None:
    async def check(client: aiohttp.ClientSession, gw: str, seen: list[Any], elsewhere: list[Any]) -> None:
        auth = {"Authorization": "Bearer $CRED{openai}"}
        async with client.get(f"{gw}/compressed/gzip", headers=auth, auto_decompress=False) as r:
            assert r.status == 200 and "Content-Encoding" not in r.headers
            first = await r.content.readline()
            assert first == b"data: first\n"  # decoded as it streams, not held to the end
            rest = await r.read()
        assert SECRET.encode() not in rest and b"invalid key Bearer [REDACTED]" in rest
        assert seen[-1]["headers"]["Accept-Encoding"] == "identity"
        for encoding in ("compress", "br", "gzip, gzip"):  # nothing zone 2 cannot read is passed on
            async with client.get(f"{gw}/compressed/{encoding}", headers=auth, auto_decompress=False) as r:
                body = await r.read()
                assert r.status == 502 and json.loads(body)["error"]["type"] == "upstream_encoding", encoding
                assert SECRET.encode() not in body

    run(check)
