"""API keys: created by `tunewise keys create`, stored hashed in the registry, checked on every API request.

A key is `tw-` followed by 32 random bytes (base64url). Only a salted SHA-256 of it is stored, with its first
characters (`prefix`) to find the row and to show in `tunewise keys list`. A plain hash is enough here, unlike
for passwords: a slow KDF (scrypt, argon2) defends low-entropy secrets against guessing, but a 256-bit random
secret cannot be guessed from its hash at any speed; the salt only makes equal keys hash differently.

Each key owns what is made with it: files, fine-tuning jobs and the models those jobs make (registry column
`api_key_id`). A key sees only its own; an admin key (`tunewise keys create --admin`) sees everything, and so
does a server run with --no-auth (loopback only: the operator's own machine). Rows with no owner (made before
keys owned rows, or with --no-auth) belong to the operator: admin keys see them, other keys do not. A row a key
may not see answers 404 exactly as a missing one does, so that a key cannot learn what other keys hold.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request

from tunewise.errors import TunewiseError
from tunewise.serve.errors import APIError

KEY_PREFIX = "tw-"
_VISIBLE = len(KEY_PREFIX) + 8  # "tw-" and 8 characters of the secret: 48 bits, enough to pick the row
# last_used_at is written at most this often per key, so that a busy key does not write the registry per request.
_TOUCH_EVERY_S = 60.0


def _hash(salt: bytes, key: str) -> str:
    return hashlib.sha256(salt + key.encode()).hexdigest()


def create_key(project: Any, name: str = "default", admin: bool = False) -> tuple[dict[str, Any], str]:
    """A new key: (its registry row without the hash, the key itself, which is shown once and never stored).

    `admin`: the key sees every key's files, jobs and models (see the module docstring)."""
    from tunewise.registry.db import utc_now

    key = KEY_PREFIX + secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    registry = project.registry()
    try:
        with registry.transaction() as conn:
            key_id = conn.execute(
                "INSERT INTO api_keys (name, prefix, salt, hash, created_at, admin) VALUES (?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                (name, key[:_VISIBLE], salt.hex(), _hash(salt, key), utc_now(), int(admin)),
            ).fetchone()[0]
        row = _public(registry.conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone())
    finally:
        registry.close()
    return row, key


def list_keys(project: Any) -> list[dict[str, Any]]:
    registry = project.registry()
    try:
        rows = registry.conn.execute("SELECT * FROM api_keys ORDER BY id").fetchall()
    finally:
        registry.close()
    return [_public(r) for r in rows]


def revoke_key(project: Any, key_id: str) -> dict[str, Any]:
    """Revoke key `key_id` (its number, or its visible prefix); revoking twice is not an error."""
    from tunewise.registry.db import utc_now

    registry = project.registry()
    try:
        column = "id" if str(key_id).isdigit() else "prefix"
        rows = registry.conn.execute(f"SELECT * FROM api_keys WHERE {column} = ?", (key_id,)).fetchall()
        if len(rows) != 1:
            raise TunewiseError(
                f"no API key '{key_id}'" if not rows else f"'{key_id}' matches {len(rows)} keys",
                hint="`tunewise keys list` shows the ids",
            )
        with registry.transaction() as conn:
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (utc_now(), rows[0]["id"]),
            )
        row = registry.conn.execute("SELECT * FROM api_keys WHERE id = ?", (rows[0]["id"],)).fetchone()
        return _public(row)
    finally:
        registry.close()


def _public(row: Any) -> dict[str, Any]:
    out = dict(row)
    out.pop("salt", None)
    out.pop("hash", None)
    return out


class KeyStore:
    """Checks keys against the registry from any thread (one connection, a lock; the server checks a key per
    request, so it keeps the connection open instead of reopening and migrating the registry each time)."""

    def __init__(self, registry_path: Path, url: str | None = None):
        """The registry's SQLite file at `registry_path`, or the PostgreSQL server `url` when given."""
        if url:
            from tunewise.registry.postgres import Connection

            self._conn: Any = Connection(url)
        else:
            self._conn = sqlite3.connect(
                registry_path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._touched: dict[int, float] = {}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def verify(self, key: str) -> dict[str, Any] | None:
        """The key's row when `key` is a valid, unrevoked key; else None."""
        from tunewise.registry.db import utc_now

        if not key.startswith(KEY_PREFIX) or len(key) <= _VISIBLE:
            return None
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM api_keys WHERE prefix = ? AND revoked_at IS NULL", (key[:_VISIBLE],)
            ).fetchall()
            for row in rows:
                if hmac.compare_digest(row["hash"], _hash(bytes.fromhex(row["salt"]), key)):
                    now = time.monotonic()
                    if now - self._touched.get(row["id"], -_TOUCH_EVERY_S) >= _TOUCH_EVERY_S:
                        self._touched[row["id"]] = now
                        self._conn.execute(
                            "UPDATE api_keys SET last_used_at = ? WHERE id = ?", (utc_now(), row["id"])
                        )
                    return _public(row)
        return None


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the key's id (None: the operator, on a --no-auth server) and whether it sees all.

    >>> Caller(3).sees(3), Caller(3).sees(4), Caller(3).sees(None), Caller(None, admin=True).sees(4)
    (True, False, False, True)
    """

    key_id: int | None
    admin: bool = False

    def sees(self, owner: int | None) -> bool:
        """Whether a row owned by key `owner` (None: the operator) is visible to this caller."""
        return self.admin or (self.key_id is not None and owner == self.key_id)

    def where(self, column: str = "api_key_id") -> tuple[str, list[Any]]:
        """An SQL condition (and its arguments) that keeps the rows this caller sees.

        >>> Caller(3).where(), Caller(None, admin=True).where()
        (('api_key_id = ?', [3]), ('1=1', []))
        """
        if self.admin:
            return "1=1", []
        return f"{column} = ?", [self.key_id]


OPERATOR = Caller(None, admin=True)


def caller(request: Request) -> Caller:
    """The caller of a request that passed `require_key`: its key, or the operator on a --no-auth server."""
    row = getattr(request.state, "api_key", None)
    if row is None:
        if getattr(request.app.state, "no_auth", False):
            return OPERATOR
        raise _unauthorized("missing API key: send `Authorization: Bearer KEY`")
    return Caller(int(row["id"]), bool(row.get("admin")))


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, "invalid_request_error", code="invalid_api_key")


async def require_key(request: Request) -> dict[str, Any] | None:
    """FastAPI dependency: the caller's key row, or None when the server runs with --no-auth.

    401 in OpenAI's shape when the `Authorization: Bearer KEY` header is missing, malformed, unknown or revoked.
    """
    state = request.app.state
    if getattr(state, "no_auth", False):
        return None
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise _unauthorized(
            "missing API key: send `Authorization: Bearer KEY` (create one with `tunewise keys create`)"
        )
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("malformed Authorization header: expected `Bearer KEY`")
    row = state.keys.verify(key.strip())
    if row is None:
        shown = key.strip()[:_VISIBLE] + "..." if len(key.strip()) > _VISIBLE else "***"
        raise _unauthorized(f"incorrect API key provided: {shown} (see `tunewise keys list`)")
    request.state.api_key = row
    return row
