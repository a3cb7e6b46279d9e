from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fleetd.errors import InvalidRequest, NotFound
from fleetd.store import Store
from fleetd.vault import Vault, VaultError, load_master_key, normalize_upstream

SECRET = "sk-test-0123456789abcdef"


def make(tmp_path: Path) -> Vault:
    return Vault(Store(tmp_path / "state.db"), load_master_key(tmp_path))


def test_secret_is_sealed_at_rest(tmp_path: Path) -> None:
    vault = make(tmp_path)
    vault.set("openai", "https://api.openai.com/", SECRET)
    vault.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path
    assert stat.S_IMODE((tmp_path / "master.key").stat().st_mode) == 0o600
    [cred] = vault.open_all()
    assert (cred.name, cred.upstream, cred.secret) == ("openai", "https://api.openai.com", SECRET)


def test_listing_never_shows_values(tmp_path: Path) -> None:
    vault = make(tmp_path)
    vault.set("a", "http://127.0.0.1:9000", SECRET)
    [row] = vault.records()
    assert set(row) == {"name", "upstream", "provider", "created_at", "updated_at"}
    assert SECRET not in repr(row)


def test_rotation_and_removal(tmp_path: Path) -> None:
    vault = make(tmp_path)
    vault.set("a", "http://127.0.0.1:9000", "one")
    vault.set("a", "http://127.0.0.1:9000", "two")
    assert [c.secret for c in vault.open_all()] == ["two"]
    vault.remove("a")
    assert vault.open_all() == []
    with pytest.raises(NotFound):
        vault.remove("a")


def test_a_row_moved_to_another_upstream_does_not_open(tmp_path: Path) -> None:
    vault = make(tmp_path)
    vault.set("a", "http://127.0.0.1:9000", SECRET)
    vault.store.conn.execute("UPDATE credentials SET upstream = 'http://evil.example'")
    with pytest.raises(VaultError, match="does not decrypt"):
        vault.open_all()


def test_wrong_key_does_not_open(tmp_path: Path) -> None:
    make(tmp_path).set("a", "http://127.0.0.1:9000", SECRET)
    (tmp_path / "master.key").write_bytes(os.urandom(32))
    with pytest.raises(VaultError):
        make(tmp_path).open_all()


def test_key_file_must_be_private(tmp_path: Path) -> None:
    load_master_key(tmp_path)
    os.chmod(tmp_path / "master.key", 0o644)
    with pytest.raises(VaultError, match="chmod 600"):
        load_master_key(tmp_path)


def test_systemd_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "fleetd-master-key").write_bytes(b"k" * 32)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_master_key(tmp_path) == b"k" * 32
    assert not (tmp_path / "master.key").exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [("https://API.openai.com/", "https://api.openai.com"), ("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080/v1")],
)
def test_upstreams(url: str, expected: str) -> None:
    assert normalize_upstream(url) == expected


@pytest.mark.parametrize("url", ["ftp://x", "api.openai.com", "https://u:p@x.com", "https://x.com/?a=1", "http://"])
def test_bad_upstreams(url: str) -> None:
    with pytest.raises(InvalidRequest):
        normalize_upstream(url)


@pytest.mark.parametrize(("name", "secret"), [("bad name", "x"), ("ok", ""), ("ok", "two\nlines")])
def test_bad_credentials(tmp_path: Path, name: str, secret: str) -> None:
    with pytest.raises(InvalidRequest):
        make(tmp_path).set(name, "http://127.0.0.1:1", secret)


def test_provider_kind_is_inferred_kept_on_rotation_and_checked(tmp_path: Path) -> None:
    vault = make(tmp_path)
    assert vault.set("oa", "https://API.openai.com/", SECRET)["provider"] == "openai"
    assert vault.set("an", "https://api.anthropic.com", SECRET)["provider"] == "anthropic"
    assert vault.set("sim", "http://127.0.0.1:9000", SECRET)["provider"] == "generic"
    assert vault.set("sim", "http://127.0.0.1:9000", SECRET, "openai")["provider"] == "openai"
    # a rotation without a kind keeps the one chosen: rotating a secret must not drop default-deny
    assert vault.set("sim", "http://127.0.0.1:9000", "rotated")["provider"] == "openai"
    assert vault.set("sim", "http://127.0.0.1:9001", "moved")["provider"] == "generic"  # a new upstream: inferred
    assert {c.name: c.provider for c in vault.open_all()} == {"oa": "openai", "an": "anthropic", "sim": "generic"}
    with pytest.raises(InvalidRequest, match="provider"):
        vault.set("x", "http://127.0.0.1:9000", SECRET, "openia")


def test_credentials_stored_before_kinds_get_the_inferred_one(tmp_path: Path) -> None:
    vault = make(tmp_path)
    vault.set("oa", "https://api.openai.com", SECRET)
    vault.store.conn.execute("UPDATE credentials SET provider = NULL")
    assert vault.records()[0]["provider"] == "openai" and vault.open_all()[0].provider == "openai"
