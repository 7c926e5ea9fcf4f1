"""The auth database (SQLite): users, OAuth clients, codes, refresh tokens, sessions, lock-outs.

Passwords are hashed with scrypt (salted, memory-hard); generated secrets (client secrets,
codes, refresh tokens, session ids: 256 random bits) are kept only as SHA-256 digests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from gateway.auth import scopes as sc

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_PASSWORD_LEN = 10
MAX_PASSWORD_LEN = 1024
SCRYPT_N_LOG2, SCRYPT_R, SCRYPT_P = 15, 8, 1
MAX_ACCESS_TOKEN_S = 3600 + 60  # the longest access token (ttl limit + leeway) a "not before" must outlive

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
  username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL CHECK (role IN ('admin','viewer')),
  scopes TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
  client_id TEXT PRIMARY KEY, secret_hash TEXT, name TEXT NOT NULL, scopes TEXT NOT NULL,
  redirect_uris TEXT NOT NULL, grant_types TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS auth_codes (
  code_hash TEXT PRIMARY KEY, client_id TEXT NOT NULL, username TEXT NOT NULL, redirect_uri TEXT,
  scope TEXT NOT NULL, code_challenge TEXT, code_challenge_method TEXT, nonce TEXT, family TEXT NOT NULL,
  expires_at REAL NOT NULL, used INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS refresh_tokens (
  token_hash TEXT PRIMARY KEY, family TEXT NOT NULL, client_id TEXT NOT NULL, username TEXT,
  scope TEXT NOT NULL, expires_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS refresh_family ON refresh_tokens (family);
CREATE TABLE IF NOT EXISTS revoked_jti (jti TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS token_not_before (key TEXT PRIMARY KEY, not_before REAL NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
  id_hash TEXT PRIMARY KEY, kind TEXT NOT NULL, username TEXT NOT NULL, scope TEXT NOT NULL,
  family TEXT, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS login_failures (
  key TEXT PRIMARY KEY, failures INTEGER NOT NULL, first_at REAL NOT NULL, locked_until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def digest(secret: str) -> str:
    """SHA-256 of a generated high-entropy secret (what the database keeps)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    """scrypt hash of `password`, self-describing: scrypt$logN$r$p$salt$hash."""
    check_password(password)
    salt = os.urandom(16)
    dk = hashlib.scrypt(
        password.encode(), salt=salt, n=1 << SCRYPT_N_LOG2, r=SCRYPT_R, p=SCRYPT_P, maxmem=128 * 1024 * 1024, dklen=32
    )
    b64 = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")  # noqa: E731
    return f"scrypt${SCRYPT_N_LOG2}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(dk)}"


def verify_password(password: str, encoded: str | None) -> bool:
    """True when `password` matches `encoded`; takes as long when there is no hash (no user)."""
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_LEN:
        return False
    try:
        kind, n, r, p, salt, want = (encoded or hash_password_dummy()).split("$")
        unb64 = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))  # noqa: E731
        dk = hashlib.scrypt(
            password.encode(), salt=unb64(salt), n=1 << int(n), r=int(r), p=int(p), maxmem=128 * 1024 * 1024, dklen=32
        )
    except (ValueError, TypeError):
        return False
    return kind == "scrypt" and encoded is not None and hmac.compare_digest(dk, unb64(want))


_DUMMY: list[str] = []


def hash_password_dummy() -> str:
    """A fixed hash, so checking a missing user costs one scrypt like a real one."""
    if not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_urlsafe(16)))
    return _DUMMY[0]


def check_password(password: str) -> str:
    """Return `password` if acceptable, else ValueError saying why."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LEN:
        raise ValueError(f"password must have at least {MIN_PASSWORD_LEN} characters")
    if len(password) > MAX_PASSWORD_LEN:
        raise ValueError(f"password must have at most {MAX_PASSWORD_LEN} characters")
    return password


def check_username(name: str) -> str:
    if not isinstance(name, str) or not USERNAME_RE.match(name):
        raise ValueError(f"user name must match {USERNAME_RE.pattern}, got {name!r}")
    return name


def check_redirect_uri(uri: str) -> str:
    """Redirect URIs are exact absolute https URLs (http only on loopback), or Lookout's own '/auth/callback'."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    ok = (
        uri == "/auth/callback"
        or (parts.scheme == "https" and parts.netloc and not parts.fragment)
        or (parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1") and not parts.fragment)
    )
    if not ok:
        raise ValueError(f"redirect URI must be an absolute https URL (http only on loopback), got {uri!r}")
    return uri


@dataclass(frozen=True)
class User:
    """A person who logs in."""

    username: str
    role: str
    scopes: frozenset[str]
    password_hash: str = field(repr=False, default="")

    def get_user_id(self) -> str:
        return self.username


@dataclass(frozen=True)
class ClientRow:
    """An OAuth client as stored."""

    client_id: str
    name: str
    scopes: frozenset[str]
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    secret_hash: str | None = field(repr=False, default=None)

    @property
    def is_public(self) -> bool:
        return self.secret_hash is None


@dataclass(frozen=True)
class CodeRow:
    client_id: str
    username: str
    redirect_uri: str | None
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    family: str
    expires_at: float
    used: bool
    code_hash: str


@dataclass(frozen=True)
class RefreshRow:
    token_hash: str
    family: str
    client_id: str
    username: str | None
    scope: str
    expires_at: float
    revoked: bool


@dataclass(frozen=True)
class SessionRow:
    kind: str
    username: str
    scope: str
    family: str | None
    expires_at: float


class AuthStore:
    """All auth state of Lookout in one SQLite file (one connection per thread, WAL)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._conn().executescript(SCHEMA)
        for extra in ("-wal", "-shm"):  # WAL files hold the same secrets as the database
            side = self.path.with_name(self.path.name + extra)
            if side.exists():
                os.chmod(side, 0o600)

    def _conn(self) -> _Tx:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=10000")
            self._local.db = _Tx(db)
            db = self._local.db
        return db

    # -- users -------------------------------------------------------------------------------
    def add_user(self, username: str, password: str, role: str = "viewer", scopes: set[str] | None = None) -> User:
        """Create a user; `scopes` default to the role's (admin: all; viewer: detections only)."""
        check_username(username)
        granted = sc.for_role(role) if role == "admin" else sc.parse(scopes or {sc.DETECTIONS_READ})
        with self._conn() as db:
            if db.execute("SELECT 1 FROM users WHERE username=?", (username,)).fetchone():
                raise ValueError(f"user {username!r} already exists")
            db.execute(
                "INSERT INTO users VALUES (?,?,?,?,?)",
                (username, hash_password(password), role, sc.to_str(granted), time.time()),
            )
        return cast(User, self.get_user(username))  # just inserted

    def get_user(self, username: str) -> User | None:
        row = self._conn().execute("SELECT * FROM users WHERE username=?", (username,)).fetchone()
        if row is None:
            return None
        return User(row["username"], row["role"], frozenset(row["scopes"].split()), row["password_hash"])

    def list_users(self) -> list[User]:
        rows = self._conn().execute("SELECT username FROM users ORDER BY username").fetchall()
        return [cast(User, self.get_user(r["username"])) for r in rows]  # listed just now

    def count_users(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM users").fetchone()[0]

    def remove_user(self, username: str) -> None:
        """Delete a user with their sessions, refresh tokens and access tokens."""
        with self._conn() as db:
            if db.execute("DELETE FROM users WHERE username=?", (username,)).rowcount == 0:
                raise ValueError(f"no user {username!r}")
            db.execute("DELETE FROM sessions WHERE username=?", (username,))
            db.execute("UPDATE refresh_tokens SET revoked=1 WHERE username=?", (username,))
            self.revoke_tokens_of(f"user:{username}")

    def set_password(self, username: str, password: str) -> None:
        """Change a password; every session, refresh token and access token of the user ends."""
        with self._conn() as db:
            n = db.execute(
                "UPDATE users SET password_hash=? WHERE username=?", (hash_password(password), username)
            ).rowcount
            if n == 0:
                raise ValueError(f"no user {username!r}")
            db.execute("DELETE FROM sessions WHERE username=?", (username,))
            db.execute("UPDATE refresh_tokens SET revoked=1 WHERE username=?", (username,))
            self.revoke_tokens_of(f"user:{username}")

    def authenticate(self, username: str, password: str) -> User | None:
        """The user when the password matches, else None (same cost either way)."""
        user = self.get_user(username) if isinstance(username, str) and USERNAME_RE.match(username) else None
        ok = verify_password(password, user.password_hash if user else None)
        return user if ok and user else None

    # -- clients -----------------------------------------------------------------------------
    def add_client(
        self,
        name: str,
        scopes: set[str],
        *,
        public: bool = False,
        redirect_uris: Sequence[str] = (),
        grant_types: list[str] | None = None,
        client_id: str | None = None,
    ) -> tuple[ClientRow, str | None]:
        """Register a client; returns it and its secret (shown once; None for a public client)."""
        client_id = client_id or "lk-" + secrets.token_hex(8)
        if not CLIENT_ID_RE.match(client_id):
            raise ValueError(f"client id must match {CLIENT_ID_RE.pattern}, got {client_id!r}")
        uris = [check_redirect_uri(u) for u in redirect_uris]
        if grant_types is None:
            grant_types = ["authorization_code", "refresh_token"] if (public or uris) else ["client_credentials"]
        for g in grant_types:
            if g not in ("authorization_code", "refresh_token", "client_credentials"):
                raise ValueError(f"unknown grant type {g!r}")
        if public and "client_credentials" in grant_types:
            raise ValueError("a public client cannot use client_credentials (it has no secret)")
        if "authorization_code" in grant_types and not uris:
            raise ValueError("a client using authorization_code needs at least one redirect URI")
        secret = None if public else secrets.token_urlsafe(32)
        with self._conn() as db:
            if db.execute("SELECT 1 FROM clients WHERE client_id=?", (client_id,)).fetchone():
                raise ValueError(f"client {client_id!r} already exists")
            db.execute(
                "INSERT INTO clients VALUES (?,?,?,?,?,?,?)",
                (
                    client_id,
                    digest(secret) if secret else None,
                    name,
                    sc.to_str(sc.parse(scopes)),
                    json.dumps(uris),
                    json.dumps(list(grant_types)),
                    time.time(),
                ),
            )
        return cast(ClientRow, self.get_client(client_id)), secret  # just inserted

    def get_client(self, client_id: str) -> ClientRow | None:
        if not isinstance(client_id, str) or not CLIENT_ID_RE.match(client_id):
            return None
        row = self._conn().execute("SELECT * FROM clients WHERE client_id=?", (client_id,)).fetchone()
        if row is None:
            return None
        return ClientRow(
            row["client_id"],
            row["name"],
            frozenset(row["scopes"].split()),
            tuple(json.loads(row["redirect_uris"])),
            tuple(json.loads(row["grant_types"])),
            row["secret_hash"],
        )

    def list_clients(self) -> list[ClientRow]:
        rows = self._conn().execute("SELECT client_id FROM clients ORDER BY client_id").fetchall()
        return [cast(ClientRow, self.get_client(r["client_id"])) for r in rows]  # listed just now

    def remove_client(self, client_id: str) -> None:
        """Delete a client and revoke its refresh and access tokens."""
        with self._conn() as db:
            if db.execute("DELETE FROM clients WHERE client_id=?", (client_id,)).rowcount == 0:
                raise ValueError(f"no client {client_id!r}")
            db.execute("UPDATE refresh_tokens SET revoked=1 WHERE client_id=?", (client_id,))
            self.revoke_tokens_of(f"client:{client_id}")

    # -- authorization codes -------------------------------------------------------------------
    def save_code(
        self,
        code: str,
        client_id: str,
        username: str,
        redirect_uri: str | None,
        scope: str,
        code_challenge: str | None,
        code_challenge_method: str | None,
        nonce: str | None,
        ttl_s: float,
    ) -> None:
        with self._conn() as db:
            db.execute(
                "INSERT INTO auth_codes VALUES (?,?,?,?,?,?,?,?,?,?,0)",
                (
                    digest(code),
                    client_id,
                    username,
                    redirect_uri,
                    scope,
                    code_challenge,
                    code_challenge_method,
                    nonce,
                    secrets.token_hex(16),
                    time.time() + ttl_s,
                ),
            )

    def get_code(self, code: str) -> CodeRow | None:
        row = self._conn().execute("SELECT * FROM auth_codes WHERE code_hash=?", (digest(code),)).fetchone()
        if row is None:
            return None
        return CodeRow(
            row["client_id"],
            row["username"],
            row["redirect_uri"],
            row["scope"],
            row["code_challenge"],
            row["code_challenge_method"],
            row["nonce"],
            row["family"],
            row["expires_at"],
            bool(row["used"]),
            row["code_hash"],
        )

    def use_code(self, code_hash: str) -> bool:
        """Mark a code used; False when it already was (a replay)."""
        with self._conn() as db:
            return db.execute("UPDATE auth_codes SET used=1 WHERE code_hash=? AND used=0", (code_hash,)).rowcount == 1

    # -- refresh tokens and revoked access tokens --------------------------------------------------
    def save_refresh(
        self, token: str, family: str, client_id: str, username: str | None, scope: str, ttl_s: float
    ) -> None:
        with self._conn() as db:
            db.execute(
                "INSERT INTO refresh_tokens VALUES (?,?,?,?,?,?,0)",
                (digest(token), family, client_id, username, scope, time.time() + ttl_s),
            )

    def get_refresh(self, token: str) -> RefreshRow | None:
        row = self._conn().execute("SELECT * FROM refresh_tokens WHERE token_hash=?", (digest(token),)).fetchone()
        if row is None:
            return None
        return RefreshRow(
            row["token_hash"],
            row["family"],
            row["client_id"],
            row["username"],
            row["scope"],
            row["expires_at"],
            bool(row["revoked"]),
        )

    def revoke_refresh(self, token_hash: str) -> bool:
        """Revoke one refresh token; False when it already was."""
        with self._conn() as db:
            return (
                db.execute(
                    "UPDATE refresh_tokens SET revoked=1 WHERE token_hash=? AND revoked=0", (token_hash,)
                ).rowcount
                == 1
            )

    def revoke_family(self, family: str) -> None:
        """Revoke every refresh and access token of a grant and end the sessions built on it."""
        with self._conn() as db:
            db.execute("UPDATE refresh_tokens SET revoked=1 WHERE family=?", (family,))
            db.execute("DELETE FROM sessions WHERE family=?", (family,))
            self.revoke_tokens_of(f"grant:{family}")

    def family_alive(self, family: str) -> bool:
        row = (
            self._conn()
            .execute(
                "SELECT 1 FROM refresh_tokens WHERE family=? AND revoked=0 AND expires_at>?", (family, time.time())
            )
            .fetchone()
        )
        return row is not None

    def revoke_jti(self, jti: str, expires_at: float) -> None:
        with self._conn() as db:
            db.execute("INSERT OR IGNORE INTO revoked_jti VALUES (?,?)", (jti, expires_at))

    def is_jti_revoked(self, jti: str) -> bool:
        return self._conn().execute("SELECT 1 FROM revoked_jti WHERE jti=?", (jti,)).fetchone() is not None

    def revoke_tokens_of(self, key: str) -> None:
        """End every access token issued until now to `key` ('user:<name>', 'client:<id>', 'grant:<family>')."""
        now = time.time()
        with self._conn() as db:
            db.execute("INSERT OR REPLACE INTO token_not_before VALUES (?,?,?)", (key, now, now + MAX_ACCESS_TOKEN_S))

    def not_before(self, keys: list[str]) -> dict[str, float]:
        """key -> time of its latest revocation, for the `keys` that have one."""
        marks = ",".join("?" * len(keys))
        rows = (
            self._conn()
            .execute(f"SELECT key, not_before FROM token_not_before WHERE key IN ({marks})", list(keys))
            .fetchall()
        )
        return {r["key"]: r["not_before"] for r in rows}

    # -- sessions ----------------------------------------------------------------------------
    def create_session(self, kind: str, username: str, scope: str, ttl_s: float, family: str | None = None) -> str:
        """A new session; returns its id (the cookie value), stored only as a digest."""
        sid = secrets.token_urlsafe(32)
        with self._conn() as db:
            db.execute(
                "INSERT INTO sessions VALUES (?,?,?,?,?,?)",
                (digest(sid), kind, username, scope, family, time.time() + ttl_s),
            )
        return sid

    def get_session(self, sid: str, kind: str) -> SessionRow | None:
        """The live session `sid` of `kind`, or None (unknown, expired or of another kind)."""
        if not isinstance(sid, str) or not (20 <= len(sid) <= 100):
            return None
        row = (
            self._conn()
            .execute(
                "SELECT * FROM sessions WHERE id_hash=? AND kind=? AND expires_at>?", (digest(sid), kind, time.time())
            )
            .fetchone()
        )
        if row is None:
            return None
        return SessionRow(row["kind"], row["username"], row["scope"], row["family"], row["expires_at"])

    def delete_session(self, sid: str) -> SessionRow | None:
        """End a session; returns what it was."""
        if not isinstance(sid, str):
            return None
        with self._conn() as db:
            row = db.execute("SELECT * FROM sessions WHERE id_hash=?", (digest(sid),)).fetchone()
            db.execute("DELETE FROM sessions WHERE id_hash=?", (digest(sid),))
        if row is None:
            return None
        return SessionRow(row["kind"], row["username"], row["scope"], row["family"], row["expires_at"])

    # -- login throttling --------------------------------------------------------------------
    def locked_for(self, key: str) -> float:
        """Seconds left of a lock-out on `key` (0 when none)."""
        row = self._conn().execute("SELECT locked_until FROM login_failures WHERE key=?", (key,)).fetchone()
        return max(0.0, row["locked_until"] - time.time()) if row else 0.0

    def record_failure(self, key: str, max_failures: int, lockout_s: float) -> float:
        """Count a failed login; returns the lock-out (s) it causes, 0 if none yet."""
        with self._conn() as db:
            return lockout_s if self._count(db, key, max_failures, lockout_s, time.time()) else 0.0

    def begin_attempt(self, limits: dict[str, int], lockout_s: float) -> tuple[float, float]:
        """Count an attempt on every key of `limits` (key -> failures allowed) *before* its secret is
        checked, in one transaction, so concurrent attempts cannot all pass one check: (wait_s, 0)
        when a key is locked (nothing counted), else (0, lockout_s if this attempt locked a key, else 0).
        A checked attempt that succeeds (or was not checked) gives its count back: `refund_attempt`."""
        now = time.time()
        with self._conn() as db:
            rows = [db.execute("SELECT locked_until FROM login_failures WHERE key=?", (k,)).fetchone() for k in limits]
            wait = max([r["locked_until"] - now for r in rows if r is not None] + [0.0])
            if wait > 0:
                return wait, 0.0
            locked = [self._count(db, k, n, lockout_s, now) for k, n in limits.items()]
        return 0.0, (lockout_s if any(locked) else 0.0)

    def refund_attempt(self, key: str, max_failures: int) -> None:
        """Take back one attempt counted by `begin_attempt` (it succeeded or was never checked)."""
        with self._conn() as db:
            row = db.execute("SELECT * FROM login_failures WHERE key=?", (key,)).fetchone()
            if row is not None and row["failures"] > 0:
                failures = row["failures"] - 1
                db.execute(
                    "UPDATE login_failures SET failures=?, locked_until=? WHERE key=?",
                    (failures, row["locked_until"] if failures >= max_failures else 0.0, key),
                )

    @staticmethod
    def _count(db: "_Tx", key: str, max_failures: int, lockout_s: float, now: float) -> bool:
        """One more failure on `key` (a window of `lockout_s` from the first); True when it locks the key."""
        row = db.execute("SELECT * FROM login_failures WHERE key=?", (key,)).fetchone()
        fresh = row is None or now - row["first_at"] > lockout_s
        failures = 1 if fresh else row["failures"] + 1
        locked = now + lockout_s if failures >= max_failures else 0.0
        db.execute(
            "INSERT OR REPLACE INTO login_failures VALUES (?,?,?,?)",
            (key, failures, now if fresh else row["first_at"], locked),
        )
        return locked > 0

    def clear_failures(self, key: str) -> None:
        with self._conn() as db:
            db.execute("DELETE FROM login_failures WHERE key=?", (key,))

    # -- housekeeping ------------------------------------------------------------------------
    def purge_expired(self) -> None:
        """Drop expired codes, tokens, sessions and revocations."""
        now = time.time()
        with self._conn() as db:
            for table in ("auth_codes", "refresh_tokens", "revoked_jti", "sessions", "token_not_before"):
                db.execute(f"DELETE FROM {table} WHERE expires_at < ?", (now - 3600,))
            db.execute("DELETE FROM login_failures WHERE locked_until < ? AND first_at < ?", (now, now - 86400))

    def get_meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta_once(self, key: str, value: str) -> bool:
        """Set `key` unless already set; True when this call set it."""
        with self._conn() as db:
            return db.execute("INSERT OR IGNORE INTO meta VALUES (?,?)", (key, value)).rowcount == 1

    def transaction(self) -> "_Tx":
        """`with store.transaction() as db:` runs statements in one write transaction."""
        return self._conn()


class _Tx:
    """A connection whose `with` block is one IMMEDIATE transaction (nested blocks join it)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.depth = 0

    def execute(self, *a):
        return self.db.execute(*a)

    def executescript(self, script: str):
        return self.db.executescript(script)

    def __enter__(self) -> "_Tx":
        if self.depth == 0 and not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
        self.depth += 1
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.depth -= 1
        if self.depth == 0 and self.db.in_transaction:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
