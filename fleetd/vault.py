"""The vault: credentials encrypted at rest with AES-256-GCM.

The master key is 32 random bytes in a 0600 file in the state dir, or systemd's
``$CREDENTIALS_DIRECTORY/fleetd-master-key`` when that is set (LoadCredential=).
Each secret is sealed with a fresh nonce; the credential's name and upstream
are the associated data, so a row copied onto another name or upstream no
longer decrypts. Plaintext leaves this module only toward zone 2's memory.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fleetd.errors import FleetdError, InvalidRequest, NotFound
from fleetd.models import iso, utcnow
from fleetd.store import Store
from fleetd.zone2.kinds import GENERIC, UnknownKind, check_kind, infer_kind

KEY_FILE = "master.key"
SYSTEMD_CREDENTIAL = "fleetd-master-key"
CRED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_SECRET = 16 * 1024


class VaultError(FleetdError):
    code = "vault_error"


def load_master_key(state_dir: Path) -> bytes:
    """Read (or create, 0600) the 32-byte master key."""
    creds_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds_dir and (Path(creds_dir) / SYSTEMD_CREDENTIAL).exists():
        key = (Path(creds_dir) / SYSTEMD_CREDENTIAL).read_bytes()
    else:
        path = state_dir / KEY_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        if path.stat().st_mode & 0o077:
            raise VaultError(f"{path} must be readable by its owner only (chmod 600)")
        key = path.read_bytes()
    if len(key) != 32:
        raise VaultError("the vault's master key must be exactly 32 bytes")
    return key


def normalize_upstream(url: str) -> str:
    """``scheme://host[:port]`` plus an optional base path; no credentials, query or fragment."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"--upstream: invalid URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"--upstream must be an http(s) URL with a host, got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidRequest("--upstream may not carry user info, a query or a fragment")
    if port == 0:
        raise InvalidRequest("--upstream: port 0 is not a port")
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host  # IPv6 literals keep their brackets
    netloc = host + (f":{port}" if port is not None else "")
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class Credential:
    name: str
    upstream: str
    secret: str
    provider: str = GENERIC


class Vault:
    """Sealed credentials in the state store."""

    def __init__(self, store: Store, key: bytes) -> None:
        self.store = store
        self.aead = AESGCM(key)

    @staticmethod
    def _aad(name: str, upstream: str) -> bytes:
        return f"fleetd-cred\0{name}\0{upstream}".encode()

    def set(self, name: str, upstream: str, secret: str, provider: str | None = None) -> dict[str, str]:
        """Create or rotate a credential; returns its public record.

        Without ``provider``, a rotation keeps the credential's kind when its upstream stays the same (a secret
        rotated must not drop the default-deny an operator chose); otherwise the kind is inferred from the host.
        """
        if not CRED_NAME.fullmatch(name):
            raise InvalidRequest(f"invalid credential name {name!r}: letters, digits, _ . - (max 64)")
        upstream = normalize_upstream(upstream)
        if not secret or len(secret) > MAX_SECRET or "\n" in secret or "\r" in secret:
            raise InvalidRequest("the secret must be one non-empty line of at most 16 KiB")
        if provider is None:
            old = self.records(name)
            provider = old[0]["provider"] if old and old[0]["upstream"] == upstream else infer_kind(upstream)
        try:
            check_kind(provider)
        except UnknownKind as exc:
            raise InvalidRequest(f"--provider: {exc}") from None
        nonce = secrets.token_bytes(12)
        sealed = self.aead.encrypt(nonce, secret.encode(), self._aad(name, upstream))
        now = iso(utcnow())
        with self.store.transaction():
            self.store.conn.execute(
                """INSERT INTO credentials (name, upstream, nonce, sealed, created_at, updated_at, provider)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET upstream = excluded.upstream, nonce = excluded.nonce,
                   sealed = excluded.sealed, updated_at = excluded.updated_at, provider = excluded.provider""",
                (name, upstream, nonce, sealed, now, now, provider),
            )
        return self.record(name)

    def record(self, name: str) -> dict[str, str]:
        rows = self.records(name)
        if not rows:
            raise NotFound(f"no such credential: {name}")
        return rows[0]

    def records(self, name: str | None = None) -> list[dict[str, str]]:
        """Names, upstreams, provider kinds and dates: never values."""
        sql = "SELECT name, upstream, provider, created_at, updated_at FROM credentials"
        params: list[str] = []
        if name is not None:
            sql += " WHERE name = ?"
            params.append(name)
        return [{**row, "provider": row["provider"] or infer_kind(row["upstream"])}
                for row in self.store.rows(sql + " ORDER BY name", params)]

    def remove(self, name: str) -> None:
        self.record(name)
        self.store.conn.execute("DELETE FROM credentials WHERE name = ?", (name,))

    def open_all(self) -> list[Credential]:
        """Every credential in plaintext, for zone 2's memory only."""
        rows = self.store.conn.execute("SELECT name, upstream, nonce, sealed, provider FROM credentials").fetchall()
        out = []
        for name, upstream, nonce, sealed, provider in rows:
            try:
                secret = self.aead.decrypt(nonce, sealed, self._aad(name, upstream)).decode()
            except InvalidTag:
                raise VaultError(f"credential {name!r} does not decrypt with this master key") from None
            out.append(Credential(name, upstream, secret, provider or infer_kind(upstream)))
        return out
