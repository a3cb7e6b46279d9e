"""Egress through zone 2's forward proxy on the real engine (issue 18, "Done means").

One daemon for the module. Its test hosts are one container the test starts on the instance's egress network under
the aliases ``allowed.example.test``, ``other.example.test``, ``pypi.example.test`` (a PEP 503 index holding a wheel
the test builds) and ``tls.example.test`` (HTTPS on 443 with a certificate of the test's own CA): it logs every
request it serves and every TLS server name it is asked for, so the test knows what reached it. Three agents run
at once, each a script printing one ``PROBE`` JSON line per attempt:

- ``web`` (role allowing the test hosts, ``zone2:8080`` and ``localhost:8080``): urllib, httpx and requests
  (pip's vendored copy) through the proxy variables or an explicit proxy, HTTPS through CONNECT, ``pip download``;
  then what must be refused: another name, IP literals (the test host's, the egress network's gateway, the cloud
  metadata address), names resolving into the agents' network and to loopback, CONNECT to another name, and a
  tunnel whose ClientHello names another host than its CONNECT;
- ``plain`` (no role, so no egress): no proxy variables, 403 from the proxy, no direct route to the test host;
- ``capped`` (256 KiB a day): a 2 MiB download is cut at the cap, the next request is 429.

Nothing here sends traffic beyond this host: every name is under .test and served by the test's own container.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import io
import ipaddress
import json
import socket
import tarfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import AGENT_IMAGE, Daemon, containers, wait_for

ALLOWED, OTHER, PYPI, TLS = "allowed.example.test", "other.example.test", "pypi.example.test", "tls.example.test"
BIG = 2 << 20  # the file the capped agent downloads
CAP = 256 << 10  # its role's --egress-max-bytes 256k
WHEEL = "fleetdprobe-0.1-py3-none-any.whl"
TEST_LABEL = "fleetd-test.egress"
CONTROL = "/?from-the-test"  # the test's own request to the test host, straight from the host

# The test hosts: HTTP on 80 and HTTPS on 443 over /srv, each request and each TLS server name asked for logged.
SERVER = r"""
import functools, http.server, json, ssl, threading

class Handler(http.server.SimpleHTTPRequestHandler):
    def setup(self):
        self.request.settimeout(10)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def log_request(self, code="-", size="-"):
        print("SEEN " + json.dumps({"port": self.server.server_port, "host": self.headers.get("Host"),
                                    "path": self.path, "status": str(getattr(code, "value", code))}), flush=True)

    def log_message(self, *args):
        pass

def sni(sock, name, context):
    print("SNI " + json.dumps(name), flush=True)

handler = functools.partial(Handler, directory="/srv")
plain = http.server.ThreadingHTTPServer(("0.0.0.0", 80), handler)
tls = http.server.ThreadingHTTPServer(("0.0.0.0", 443), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("/certs/server.pem", "/certs/server.key")
context.sni_callback = sni
tls.socket = context.wrap_socket(tls.socket, server_side=True, do_handshake_on_connect=False)
threading.Thread(target=tls.serve_forever, daemon=True).start()
print("READY", flush=True)
plain.serve_forever()
"""

# What every agent script starts with: reporting, urllib through the environment's proxies, a request straight to
# the proxy port (whatever NO_PROXY says), and a hand-made CONNECT tunnel.
COMMON = r"""
import base64, http.client, json, os, socket, ssl, subprocess, sys, urllib.error, urllib.request
PROXY = "http://zone2:3128"

def report(name, probe):
    try:
        result = probe()
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    print("PROBE " + json.dumps({"probe": name, **result}), flush=True)

def answer(status, body, kind=None):
    return {"status": status, "body": body.decode(errors="replace")[:2000], "type": kind}

def fetch(url, context=None):
    try:
        with urllib.request.urlopen(url, timeout=20, context=context) as r:
            return answer(r.status, r.read(), r.headers.get("Content-Type"))
    except urllib.error.HTTPError as exc:
        return answer(exc.code, exc.read(), exc.headers.get("Content-Type"))

def via_proxy(url):
    conn = http.client.HTTPConnection("zone2", 3128, timeout=20)
    try:
        conn.request("GET", url)
        r = conn.getresponse()
        return answer(r.status, r.read(), r.getheader("Content-Type"))
    finally:
        conn.close()

def tunnel(host, server_name, context):
    sock = socket.create_connection(("zone2", 3128), timeout=20)
    try:
        sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        result = {"status": int(head.split()[1]) if head else None, "head": head.decode(errors="replace")}
        if result["status"] != 200:
            while chunk := sock.recv(65536):
                rest += chunk
            result["body"] = rest.decode(errors="replace")
            return result
        try:
            with context.wrap_socket(sock, server_hostname=server_name) as tls:
                tls.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                reply = b""
                while chunk := tls.recv(65536):
                    reply += chunk
            result["tls"], result["reply"] = "ok", reply.decode(errors="replace")[:300]
        except OSError as exc:
            result["tls"] = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        sock.close()
"""

WEB_AGENT = COMMON + r"""
ca = base64.b64decode(os.environ["TEST_CA"]).decode()
open("/tmp/ca.pem", "w").write(ca)
verified = ssl.create_default_context(cadata=ca)
unchecked = ssl.create_default_context(cadata=ca)
unchecked.check_hostname = False  # the chain is still verified: only the server's name is not
try:
    import httpx
except ImportError:
    import httpx2 as httpx
from pip._vendor import requests

def with_httpx(url, **options):
    with httpx.Client(timeout=20, **options) as client:
        r = client.get(url)
        return answer(r.status_code, r.content, r.headers.get("content-type"))

def with_requests(url, **options):
    r = requests.get(url, timeout=20, **options)
    return answer(r.status_code, r.content, r.headers.get("Content-Type"))

def pip_download():
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--no-input",
                        "--disable-pip-version-check", "--index-url", "http://pypi.example.test/simple/",
                        "--trusted-host", "pypi.example.test", "--dest", "/tmp/dl", "fleetdprobe"],
                       capture_output=True, text=True, timeout=120)
    files = sorted(os.listdir("/tmp/dl")) if os.path.isdir("/tmp/dl") else []
    return {"rc": r.returncode, "files": files, "output": (r.stdout + r.stderr)[-1500:]}

report("env", lambda: {"env": {k: os.environ.get(k) for k in ("HTTP_PROXY", "https_proxy", "NO_PROXY")}})
report("urllib", lambda: fetch("http://allowed.example.test/"))
report("urllib https", lambda: fetch("https://tls.example.test/", verified))
report("httpx env", lambda: with_httpx("http://allowed.example.test/"))
report("httpx proxy", lambda: with_httpx("http://allowed.example.test/", proxy=PROXY, trust_env=False))
report("httpx https", lambda: with_httpx("https://tls.example.test/", verify=verified))
report("requests proxies", lambda: with_requests("http://allowed.example.test/", proxies={"http": PROXY}))
report("requests https", lambda: with_requests("https://tls.example.test/", verify="/tmp/ca.pem",
                                               proxies={"https": PROXY}))
report("pip", pip_download)
report("sni match", lambda: tunnel("tls.example.test", "tls.example.test", unchecked))
report("other", lambda: fetch("http://other.example.test/"))
report("ip literal", lambda: fetch(f"http://{os.environ['HOST_IP']}/"))
report("gateway", lambda: fetch(f"http://{os.environ['GATEWAY']}/"))
report("metadata", lambda: fetch("http://169.254.169.254/latest/meta-data/"))
report("agents network", lambda: via_proxy("http://zone2:8080/"))
report("loopback", lambda: via_proxy("http://localhost:8080/"))
report("connect other", lambda: tunnel("other.example.test", "other.example.test", unchecked))
report("sni mismatch", lambda: tunnel("tls.example.test", "other.example.test", unchecked))
"""

PLAIN_AGENT = COMMON + r"""
def direct():
    try:
        socket.create_connection((os.environ["HOST_IP"], 80), timeout=3).close()
        return {"connect": "connected"}
    except OSError as exc:
        return {"connect": type(exc).__name__}

def resolve():
    try:
        return {"addresses": sorted({a[4][0] for a in socket.getaddrinfo("allowed.example.test", 80)})}
    except OSError as exc:
        return {"addresses": None, "error": type(exc).__name__}

names = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy")
report("env", lambda: {"env": {k: os.environ[k] for k in names if k in os.environ}})
report("via proxy", lambda: via_proxy("http://allowed.example.test/"))
report("direct", direct)
report("resolve", resolve)
"""

CAPPED_AGENT = COMMON + r"""
def download():
    sock = socket.create_connection(("zone2", 3128), timeout=30)
    sock.sendall(b"GET http://allowed.example.test/big.bin HTTP/1.1\r\nHost: allowed.example.test\r\n"
                 b"Connection: close\r\n\r\n")
    data, ended = b"", "eof"
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError as exc:
        ended = type(exc).__name__
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return {"head": head.decode(errors="replace"), "body_bytes": len(body), "ended": ended}

report("download", download)
report("after cap", lambda: fetch("http://allowed.example.test/"))
"""


@dataclass
class Run:
    """The module's daemon, its test host, and what each agent reported."""

    daemon: Daemon
    metrics_port: int
    host_ip: str
    gateway: str
    agents_subnet: str
    ids: dict[str, str]  # web, plain, capped -> agent id
    probes: dict[str, dict[str, dict[str, Any]]]  # agent -> probe name -> its report
    seen: list[dict[str, Any]]  # requests the test host served
    server_names: list[str | None]  # TLS server names the test host was asked for

    def log(self, agent: str, *flags: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(
            self.daemon.cli("egress", "log", "--agent", self.ids[agent], "--json", *flags).stdout)
        return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def certificates() -> tuple[bytes, bytes, bytes]:
    """A CA (PEM) and a server certificate and key it signed for ``tls.example.test`` (PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetd egress test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS)]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS)]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return (ca.public_bytes(serialization.Encoding.PEM), server.public_bytes(serialization.Encoding.PEM), key_pem)


def wheel() -> bytes:
    """A tiny valid wheel of ``fleetdprobe`` 0.1 (METADATA, WHEEL, RECORD with each file's hash)."""
    info = "fleetdprobe-0.1.dist-info"
    files = {
        "fleetdprobe/__init__.py": b"VALUE = 1\n",
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: fleetdprobe\nVersion: 0.1\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: fleetd-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()) + f"{info}/RECORD,,\n"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in [*files.items(), (f"{info}/RECORD", record.encode())]:
            archive.writestr(name, data)
    return out.getvalue()


def host_files(server_pem: bytes, key_pem: bytes) -> bytes:
    """A tar of the test host's /srv (a page, a 2 MiB file, the simple index and its wheel) and /certs."""
    package = wheel()
    index = (f'<!DOCTYPE html><html><body><a href="/packages/{WHEEL}#sha256={hashlib.sha256(package).hexdigest()}">'
             f"{WHEEL}</a></body></html>\n").encode()
    files = {
        "srv/index.html": b"hello from the test host\n",
        "srv/big.bin": bytes(range(256)) * (BIG // 256),
        "srv/simple/fleetdprobe/index.html": index,
        f"srv/packages/{WHEEL}": package,
        "certs/server.pem": server_pem,
        "certs/server.key": key_pem,
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for directory in ("srv", "srv/simple", "srv/simple/fleetdprobe", "srv/packages", "certs"):
            entry = tarfile.TarInfo(directory)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(entry)
        for name, data in files.items():
            entry = tarfile.TarInfo(name)
            entry.size, entry.mode = len(data), 0o644
            tar.addfile(entry, io.BytesIO(data))
    return out.getvalue()


def start_test_host(engine: docker.DockerClient, daemon: Daemon, files: bytes) -> Any:
    """The test hosts' container on the instance's egress network, under every test host name, serving."""
    api = engine.api
    egress = f"fleetd-{daemon.instance}-egress"
    endpoint = api.create_endpoint_config(aliases=[ALLOWED, OTHER, PYPI, TLS])
    created = api.create_container(
        AGENT_IMAGE, ["python3", "-u", "-c", SERVER], user="0",
        labels={"fleetd.instance": daemon.instance, TEST_LABEL: "host"},
        host_config=api.create_host_config(network_mode=egress),
        networking_config=api.create_networking_config({egress: endpoint}),  # type: ignore[arg-type]
    )
    container = engine.containers.get(created["Id"])
    container.put_archive("/", files)
    container.start()

    def up() -> bool:
        container.reload()
        return b"READY" in container.logs() or container.status == "exited"

    wait_for(up, 30, what="the test host")
    assert b"READY" in container.logs(), container.logs().decode(errors="replace")
    return container


def remove_test_hosts(engine: docker.DockerClient, instance: str) -> None:
    for container in engine.containers.list(all=True, filters={"label": [f"fleetd.instance={instance}",
                                                                          TEST_LABEL]}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)


def probes(daemon: Daemon, agent_id: str) -> dict[str, dict[str, Any]]:
    found = {}
    for line in daemon.logs(agent_id).splitlines():
        if line.startswith("PROBE "):
            report = json.loads(line.removeprefix("PROBE "))
            found[report.pop("probe")] = report
    return found


def host_log(container: Any) -> tuple[list[dict[str, Any]], list[str | None]]:
    seen, names = [], []
    for line in container.logs().decode(errors="replace").splitlines():
        if line.startswith("SEEN "):
            seen.append(json.loads(line.removeprefix("SEEN ")))
        elif line.startswith("SNI "):
            names.append(json.loads(line.removeprefix("SNI ")))
    return seen, names


@pytest.fixture(scope="module")
def run(engine: docker.DockerClient, sdk_image: str) -> Iterator[Run]:
    port = free_port()
    daemon = Daemon(args=("--metrics", f"127.0.0.1:{port}")).start()
    try:
        egress = wait_for(lambda: engine.networks.list(names=[f"fleetd-{daemon.instance}-egress"]), 30,
                          what="the egress network")[0]
        egress.reload()
        gateway = egress.attrs["IPAM"]["Config"][0]["Gateway"]
        agents_net = engine.networks.get(f"fleetd-{daemon.instance}-agents")
        agents_subnet = agents_net.attrs["IPAM"]["Config"][0]["Subnet"]
        ca, server_pem, key_pem = certificates()
        host = start_test_host(engine, daemon, host_files(server_pem, key_pem))
        host.reload()
        host_ip = host.attrs["NetworkSettings"]["Networks"][egress.name]["IPAddress"]
        # The test host answers its own creator on the host: a direct route would reach it.
        with urllib.request.urlopen(f"http://{host_ip}{CONTROL}", timeout=10) as response:
            assert response.read() == b"hello from the test host\n"
        daemon.cli("role", "set", "web", "--egress", f"{ALLOWED},{PYPI},{TLS},zone2:8080,localhost:8080")
        daemon.cli("role", "set", "capped", "--egress", ALLOWED, "--egress-max-bytes", "256k")
        env = ["-e", f"HOST_IP={host_ip}", "-e", f"GATEWAY={gateway}"]
        started = time.monotonic()
        ids = {
            "web": daemon.spawn("--role", "web", "--ttl", "300", *env, "-e",
                                f"TEST_CA={base64.b64encode(ca).decode()}", sdk_image, "python3", "-c", WEB_AGENT),
            "plain": daemon.spawn("--ttl", "300", *env, AGENT_IMAGE, "python3", "-c", PLAIN_AGENT),
            "capped": daemon.spawn("--role", "capped", "--ttl", "300", *env, AGENT_IMAGE, "python3", "-c",
                                   CAPPED_AGENT),
        }
        for agent_id in ids.values():
            daemon.wait_state(agent_id, "exited", timeout=180)
        print(f"\nagents ran in {time.monotonic() - started:.1f}s")
        seen, names = host_log(host)
        seen = [s for s in seen if s["path"] != CONTROL]
        yield Run(daemon, port, host_ip, gateway, agents_subnet, ids,
                  {name: probes(daemon, agent_id) for name, agent_id in ids.items()}, seen, names)
    finally:
        remove_test_hosts(engine, daemon.instance)
        daemon.cleanup()


def refusal(report: dict[str, Any], status: int = 403, kind: str = "egress_denied") -> str:
    """The message of zone 2's JSON refusal in ``report``, after checking its status and type."""
    assert report.get("status") == status, report
    assert (report.get("type") or "").startswith("application/json"), report
    error = json.loads(report["body"])["error"]
    assert error["type"] == kind and error["code"] == kind, error
    message: str = error["message"]
    return message


def test_an_agent_reaches_the_allowed_hosts_with_unmodified_clients(run: Run) -> None:
    web = run.probes["web"]
    assert web["env"]["env"] == {"HTTP_PROXY": "http://zone2:3128", "https_proxy": "http://zone2:3128",
                                 "NO_PROXY": "zone2,localhost,127.0.0.1,::1"}, web["env"]
    # plain HTTP in absolute form, then HTTPS through CONNECT with the certificate verified by name
    for probe in ("urllib", "httpx env", "httpx proxy", "requests proxies", "urllib https", "httpx https",
                  "requests https"):
        report = web[probe]
        assert report.get("status") == 200 and report["body"] == "hello from the test host\n", (probe, report)
    assert web["sni match"].get("tls") == "ok" and "hello from the test host" in web["sni match"]["reply"], web
    pip = web["pip"]
    assert pip.get("rc") == 0 and pip["files"] == [WHEEL], pip
    # and the test host saw them, by name, through the proxy
    plain = [(s["host"].split(":")[0], s["path"]) for s in run.seen if s["port"] == 80]
    assert plain.count((ALLOWED, "/")) == 4, run.seen
    assert (PYPI, "/simple/fleetdprobe/") in plain and (PYPI, f"/packages/{WHEEL}") in plain, run.seen
    served_tls = [s for s in run.seen if s["port"] == 443]
    assert len(served_tls) == 4 and all(s["status"] == "200" for s in served_tls), served_tls
    assert run.server_names.count(TLS) == 4, run.server_names


def test_the_egress_log_shows_the_allowed_connections_with_their_bytes(run: Run) -> None:
    rows = [r for r in run.log("web") if r["decision"] == "allowed"]
    assert all(r["agent_id"] == run.ids["web"] and r["reason"] is None for r in rows), rows
    by_host: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_host.setdefault((row["host"], row["method"]), []).append(row)
    assert len(by_host.get((ALLOWED, "GET"), [])) == 4, rows
    assert len(by_host.get((TLS, "CONNECT"), [])) == 4, rows
    assert len(by_host.get((PYPI, "GET"), [])) >= 2, rows
    for row in rows:
        assert row["bytes_out"] > 0 and row["bytes_in"] > 0 and row["port"] in (80, 443), row
        assert row["address"] == run.host_ip, row  # the address zone 2 checked is the one it connected to
    wheel_fetch = max(by_host[(PYPI, "GET")], key=lambda r: r["bytes_in"])
    assert wheel_fetch["bytes_in"] > len(wheel()), wheel_fetch


def test_names_and_addresses_outside_the_policy_are_refused(run: Run) -> None:
    web = run.probes["web"]
    assert OTHER in refusal(web["other"])
    for probe, address in (("ip literal", run.host_ip), ("gateway", run.gateway), ("metadata", "169.254.169.254")):
        assert address in refusal(web[probe]), (probe, web[probe])
    assert "agents' network" in refusal(web["agents network"]), web["agents network"]
    assert "loopback" in refusal(web["loopback"]), web["loopback"]
    connect = web["connect other"]  # CONNECT is refused in plain text, which curl prints
    assert connect.get("status") == 403 and "text/plain" in connect["head"] and OTHER in connect["body"], connect
    mismatch = web["sni mismatch"]  # the tunnel was answered, then closed at the ClientHello
    assert mismatch.get("status") == 200 and mismatch.get("tls") not in (None, "ok"), mismatch
    # none of it reached the test host
    assert not [s for s in run.seen if s["host"].split(":")[0] in (OTHER, run.host_ip)], run.seen
    assert OTHER not in run.server_names, run.server_names

    denied = run.log("web", "--denied")
    assert denied and all(r["decision"] == "denied" for r in denied), denied

    def reason(host: str, port: int, method: str = "GET") -> str:
        found = [r for r in denied if (r["host"], r["port"], r["method"]) == (host, port, method)]
        assert len(found) == 1, (host, port, method, denied)
        text: str = found[0]["reason"]
        return text

    assert reason(OTHER, 80).startswith("not allowed:")
    for address in (run.host_ip, run.gateway, "169.254.169.254"):
        assert reason(address, 80).startswith("not a host name:"), address
    agents = [r for r in denied if r["host"] == "zone2"]
    assert len(agents) == 1 and agents[0]["reason"].startswith("refused address:"), agents
    assert "inside the agents' network" in agents[0]["reason"], agents
    assert ipaddress.ip_address(agents[0]["address"]) in ipaddress.ip_network(run.agents_subnet), agents
    assert reason("localhost", 8080).startswith("refused address:") and "loopback" in reason("localhost", 8080)
    assert reason(OTHER, 443, "CONNECT").startswith("not allowed:")
    assert reason(TLS, 443, "CONNECT").startswith("sni mismatch:")
    assert len(denied) == 8, denied


def test_denials_are_events(run: Run) -> None:
    events = [e for e in run.daemon.events() if e["type"] == "egress_denied"]
    assert all(e["agent_id"] in run.ids.values() for e in events), events  # none of an "unknown" address
    for agent in ("web", "plain", "capped"):  # at least one each: they are throttled to one a minute per agent
        assert [e for e in events if e["agent_id"] == run.ids[agent]], (agent, events)
    first = next(e for e in events if e["agent_id"] == run.ids["web"])
    assert OTHER in first["message"], first  # the web agent's first denial


def test_an_agent_without_egress_reaches_nothing(run: Run) -> None:
    plain = run.probes["plain"]
    assert plain["env"]["env"] == {}, plain["env"]
    assert "allows no egress" in refusal(plain["via proxy"]), plain
    assert plain["direct"].get("connect") not in (None, "connected"), plain["direct"]
    assert plain["resolve"].get("addresses") is None, plain["resolve"]
    (row,) = run.log("plain")
    assert row["decision"] == "denied" and row["reason"].startswith("no egress:"), row


def test_the_byte_cap_cuts_a_long_download_and_refuses_the_next(run: Run) -> None:
    capped = run.probes["capped"]
    download = capped["download"]
    assert download.get("head", "").startswith("HTTP/1.") and f"Content-Length: {BIG}" in download["head"], download
    assert 0 < download["body_bytes"] < CAP, download  # cut mid-transfer, never past the cap
    assert f"its {CAP} bytes of egress for today" in refusal(capped["after cap"], 429, "egress_limit"), capped
    rows = run.log("capped")
    assert len(rows) == 2, rows
    cut, refused = rows
    assert cut["decision"] == "allowed" and cut["reason"] == "byte cap", cut
    assert cut["bytes_in"] + cut["bytes_out"] == CAP, cut  # the cap is reached exactly
    assert refused["decision"] == "denied" and refused["reason"].startswith("byte cap:"), refused
    assert [s for s in run.seen if s["path"] == "/big.bin"], run.seen


def test_the_proxy_is_counted_in_prometheus(run: Run) -> None:
    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{run.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {f"{sample.name}{sorted(sample.labels.items())}": sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name.startswith("fleetd_egress")}

    rows = json.loads(run.daemon.cli("egress", "log", "--json", "-n", "1000").stdout)
    assert {r["agent_id"] for r in rows} == set(run.ids.values()), rows  # every connection is an agent's
    allowed = sum(r["decision"] == "allowed" for r in rows)
    denied = len(rows) - allowed
    metrics = wait_for(lambda: (m := scrape()) and m.get("fleetd_egress_connections_total[('decision', 'allowed')]")
                       == allowed and m, 30, what=f"{allowed} allowed connections counted")
    assert metrics["fleetd_egress_connections_total[('decision', 'denied')]"] == denied, metrics
    assert metrics["fleetd_egress_bytes_total[('direction', 'in')]"] == sum(r["bytes_in"] for r in rows), metrics
    assert metrics["fleetd_egress_bytes_total[('direction', 'out')]"] == sum(r["bytes_out"] for r in rows), metrics


def test_spawn_cannot_widen_its_roles_egress(run: Run) -> None:
    before = len(run.daemon.agents())
    result = run.daemon.cli("spawn", "--role", "capped", "--egress", OTHER, AGENT_IMAGE, "true", check=False)
    assert result.returncode != 0, result
    assert len(result.stderr.strip().splitlines()) == 1 and OTHER in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not result.stdout.strip(), result
    assert len(run.daemon.agents()) == before
    made = {c.labels.get("fleetd.agent-id") for c in containers(run.daemon.instance, kinds=("zone2", "netns"))}
    assert made == {*run.ids.values(), None}, made  # the three agents and the test host, nothing new
