"""Loopback HTTP for the zone 2 unit tests: a server on a free 127.0.0.1 port, an upstream that echoes, and TLS
contexts for a server and the one client that trusts it.

Shared by tests/unit/test_zone2_proxy.py, test_zone2_guard.py, test_zone2_robustness.py and the metering rig; not
a test module itself (pytest collects only test_*.py).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import re
import socket
import ssl
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SECRET = "sk-live-TOPSECRET-42"  # the real key behind $CRED{openai} in the tests that use upstream_app


def self_signed(tmp: Path, name: str, san: x509.GeneralName) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for ``san`` (files in ``tmp``), and a client context that
    trusts only it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([san]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return server, ssl.create_default_context(cafile=str(tmp / "cert.pem"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def upstream_app(seen: list[dict[str, Any]]) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        seen.append({"path": request.path_qs, "headers": dict(request.headers), "body": await request.text()})
        if request.path == "/echo-key":  # an API that puts the key in its error message (and its reason phrase)
            key = request.headers.get("Authorization")
            return web.json_response({"error": f"invalid key {key}"}, status=401, reason=f"Invalid key {key}")
        if request.path == "/echo-forms":  # the key as a URL, a JSON string and Basic credentials would carry it
            key = request.query.get("key", "")
            encoded = quote(key, safe="")
            forms = [encoded, re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded),
                     json.dumps(key)[1:-1].replace("/", "\\/"), base64.b64encode(f"user:{key}".encode()).decode(),
                     base64.urlsafe_b64encode(key.encode()).decode()]
            return web.Response(text="\n".join(forms))  # as sent: a JSON answer would escape them once more
        if request.path == "/redirect":
            raise web.HTTPFound("http://127.0.0.2:1/steal")
        if request.path.startswith("/compressed/"):  # an upstream that compresses although asked for identity
            return await compressed(request, request.path.removeprefix("/compressed/"))
        if request.path == "/big":  # an answer of 8 MiB with a known length (read whole when it may be)
            return web.Response(body=b"x" * (8 << 20), content_type="application/octet-stream")
        if request.path == "/stream":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(3):
                await response.write(f"data: {i}\n\n".encode())
                await asyncio.sleep(0.05)
            await response.write(f"data: {request.headers.get('x-api-key')}\n\n".encode())
            await response.write_eof()
            return response
        return web.json_response({"path": request.path_qs, "auth": request.headers.get("Authorization")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def compressed(request: web.Request, encoding: str) -> web.StreamResponse:
    """The key echoed back in a body compressed with ``encoding`` (gzip: in two flushed parts, as a stream)."""
    key = request.headers.get("Authorization", "")
    packer = zlib.compressobj(wbits=31)  # gzip framing
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Content-Encoding": encoding})
    await response.prepare(request)
    await response.write(packer.compress(b"data: first\n\n") + packer.flush(zlib.Z_SYNC_FLUSH))
    await asyncio.sleep(0.05)
    await response.write(packer.compress(f"data: invalid key {key}\n\n".encode()) + packer.flush())
    await response.write_eof()
    return response
