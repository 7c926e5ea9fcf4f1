"""Lookout's access tokens: short-lived RS256 JWTs (RFC 9068 profile) and their verification.

Claims: iss, aud, sub, client_id, scope, iat, nbf, exp, jti; header: alg RS256, kid, typ at+jwt.
Verification accepts only RS256 with a known kid (so `alg: none` and HMAC-with-the-public-key
tokens fail), and checks iss, aud, exp/nbf (with a small leeway), typ and revocation.
"""
from __future__ import annotations

import json
import secrets
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


def verify_jwt(token: str, keys: KeySet, algorithms: list[str], issuer: str, audience: str,
               typ: str | None = None, leeway_s: int = LEEWAY_S) -> dict:
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


class AccessTokens:
    """Issues and verifies Lookout's access tokens."""

    def __init__(self, keys: KeyStore, issuer: str, audience: str, ttl_s: int,
                 is_revoked: Callable[[str], bool] | None = None):
        self.keys, self.issuer, self.audience, self.ttl_s = keys, issuer, audience, ttl_s
        self.is_revoked = is_revoked
        self._verify_keys = keys.verify_keyset()

    def issue(self, sub: str, scope: str, client_id: str, ttl_s: int | None = None,
              now: float | None = None) -> str:
        """A signed access token for `sub` with `scope`."""
        now = int(now if now is not None else time.time())
        claims = {"iss": self.issuer, "aud": self.audience, "sub": sub, "client_id": client_id, "scope": scope,
                  "iat": now, "nbf": now, "exp": now + (ttl_s or self.ttl_s), "jti": secrets.token_urlsafe(16)}
        header = {"alg": ALG, "kid": self.keys.kid, "typ": ACCESS_TOKEN_TYP}
        return jwt.encode(header, claims, self.keys.signing_key)

    def verify(self, token: str) -> dict:
        """The claims of a valid, unrevoked Lookout access token; TokenError otherwise."""
        claims = verify_jwt(token, self._verify_keys, [ALG], self.issuer, self.audience, typ=ACCESS_TOKEN_TYP)
        if not isinstance(claims.get("scope", ""), str) or not isinstance(claims.get("jti"), str):
            raise TokenError("bad token (scope/jti)")
        if self.is_revoked is not None and self.is_revoked(claims["jti"]):
            raise TokenError("token revoked")
        return claims
