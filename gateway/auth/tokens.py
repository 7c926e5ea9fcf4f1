"""Lookout's access tokens: short-lived RS256 JWTs (RFC 9068 profile) and their verification.

Claims: iss, aud, sub, client_id, scope, iat (ms precision), nbf, exp, jti, and grant_id for tokens
of a user's grant (the refresh token family); header: alg RS256, kid, typ at+jwt.
Verification accepts only RS256 with a known kid (so `alg: none` and HMAC-with-the-public-key
tokens fail), and checks iss, aud, exp/nbf (with a small leeway), typ and revocation: of the token
itself (its jti), or of its user, client or grant since the token was issued (`Revocations`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from gateway.auth.keys import ALG, KeyStore

MAX_TOKEN_BYTES = 8192
LEEWAY_S = 10
ACCESS_TOKEN_TYP = "at+jwt"


class TokenError(Exception):
    """A token that must not be accepted; the message says why (safe to show the caller)."""


def peek_claims(token: str) -> dict:
    """The unverified claims of a JWT (only to choose which issuer's keys verify it)."""
    try:
        payload = token.split(".")[1]
        import base64

        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, UnicodeDecodeError):
        raise TokenError("malformed token") from None


def verify_jwt(
    token: str,
    keys: KeySet,
    algorithms: list[str],
    issuer: str,
    audience: str,
    typ: str | None = None,
    leeway_s: int = LEEWAY_S,
) -> dict:
    """Verify a JWT's signature and its iss/aud/exp/nbf/iat; returns the claims or raises TokenError."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        raise TokenError("malformed token")
    if token.count(".") != 2:
        raise TokenError("malformed token")
    try:
        decoded = jwt.decode(token, keys, algorithms=algorithms)
    except JoseError as exc:
        raise TokenError(f"bad token ({exc.error})") from None
    except (ValueError, TypeError, KeyError):
        raise TokenError("malformed token") from None
    if typ is not None and str(decoded.header.get("typ", "")).lower() not in (typ, f"application/{typ}"):
        raise TokenError(f"bad token type {decoded.header.get('typ')!r} (expected {typ})")
    registry = JWTClaimsRegistry(
        leeway=leeway_s,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        iat={"essential": False},
        sub={"essential": True},
    )
    try:
        registry.validate(decoded.claims)
    except JoseError as exc:
        reason = {"expired_token": "token expired"}.get(exc.error, f"bad token ({exc.error}: {exc.description})")
        raise TokenError(reason) from None
    return decoded.claims


def revocation_keys(claims: dict) -> list[str]:
    """What revoking would end this token: its client, its user (tokens of a user) and its grant."""
    keys = [f"client:{claims.get('client_id')}"]
    if claims.get("sub") != claims.get("client_id"):
        keys.append(f"user:{claims.get('sub')}")
    if claims.get("grant_id"):
        keys.append(f"grant:{claims['grant_id']}")
    return keys


class Revocations:
    """Whether an access token was revoked: its jti, or its user, client or grant since it was issued
    (a "not before" per key in the shared auth database, cached `cache_s` per key so that a revocation
    anywhere, the CLI included, reaches every gateway replica within `cache_s`)."""

    MAX_CACHED = 10_000

    def __init__(self, store, cache_s: float, clock: Callable[[], float] = time.monotonic):
        self.store, self.cache_s, self.clock = store, cache_s, clock
        self._cache: dict[str, tuple[float, float]] = {}  # key -> (not before, when read)
        self._lock = threading.Lock()

    def not_before(self, keys: list[str]) -> float:
        """The latest revocation of any of `keys` (0: none)."""
        now = self.clock()
        with self._lock:
            cached = {k: self._cache[k] for k in keys if k in self._cache}
        values = {k: v for k, (v, read) in cached.items() if now - read < self.cache_s}
        missing = [k for k in keys if k not in values]
        if missing:
            fresh = self.store.not_before(missing)
            with self._lock:
                if len(self._cache) > self.MAX_CACHED:
                    self._cache.clear()
                for k in missing:
                    values[k] = fresh.get(k, 0.0)
                    self._cache[k] = (values[k], now)
        return max(values.values(), default=0.0)

    def __call__(self, claims: dict) -> bool:
        if self.store.is_jti_revoked(claims["jti"]):
            return True
        return claims["iat"] <= self.not_before(revocation_keys(claims))


class AccessTokens:
    """Issues and verifies Lookout's access tokens."""

    def __init__(
        self, keys: KeyStore, issuer: str, audience: str, ttl_s: int, is_revoked: Callable[[dict], bool] | None = None
    ):
        self.keys, self.issuer, self.audience, self.ttl_s = keys, issuer, audience, ttl_s
        self.is_revoked = is_revoked
        self._verify_keys = keys.verify_keyset()

    def issue(
        self,
        sub: str,
        scope: str,
        client_id: str,
        ttl_s: int | None = None,
        now: float | None = None,
        grant_id: str | None = None,
    ) -> str:
        """A signed access token for `sub` with `scope` (under the grant `grant_id`, for a user's tokens)."""
        now = now if now is not None else time.time()
        # iat in ms: a revocation in the same second as a new login must end only the older tokens
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "client_id": client_id,
            "scope": scope,
            "iat": round(now, 3),
            "nbf": int(now),
            "exp": int(now) + (ttl_s or self.ttl_s),
            "jti": secrets.token_urlsafe(16),
        }
        if grant_id:
            claims["grant_id"] = grant_id
        header = {"alg": ALG, "kid": self.keys.kid, "typ": ACCESS_TOKEN_TYP}
        return jwt.encode(header, claims, self.keys.signing_key)

    def verify(self, token: str) -> dict:
        """The claims of a valid, unrevoked Lookout access token; TokenError otherwise."""
        claims = verify_jwt(token, self._verify_keys, [ALG], self.issuer, self.audience, typ=ACCESS_TOKEN_TYP)
        if not isinstance(claims.get("scope", ""), str) or not isinstance(claims.get("jti"), str):
            raise TokenError("bad token (scope/jti)")
        if not isinstance(claims.get("iat"), (int, float)):
            raise TokenError("bad token (iat)")
        if self.is_revoked is not None and self.is_revoked(claims):
            raise TokenError("token revoked")
        return claims
