"""Lookout's secrets on disk: the token signing key (RS256) and an HMAC secret.

Both are made on first start in `key_dir` (mode 0700, files 0600) and never leave it; the
public half of the signing key is published as JWKS. Creation is atomic, so gateway replicas
starting together end up with the same files.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from joserfc.jwk import KeySet, RSAKey

log = logging.getLogger(__name__)
SIGNING_KEY_FILE = "signing-key.pem"
HMAC_SECRET_FILE = "hmac-secret"
ALG = "RS256"


def _write_once(path: Path, data: bytes) -> bool:
    """Create `path` with `data` (mode 0600) unless it exists; True when this call created it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic: fails if another process made it first
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)


def _read_private(path: Path) -> bytes:
    """Read a secret file, tightening its mode to 0600 if group/others could read it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s had mode %o; setting it to 600", path, mode)
        os.chmod(path, 0o600)
    return path.read_bytes()


class KeyStore:
    """The signing key (with its key id) and the HMAC secret of one Lookout installation."""

    def __init__(self, key_dir: str | os.PathLike):
        self.dir = Path(key_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        key_path = self.dir / SIGNING_KEY_FILE
        if not key_path.exists():
            pem = RSAKey.generate_key(2048, private=True).as_pem(private=True)
            if _write_once(key_path, pem):
                log.info("generated a new token signing key in %s", key_path)
        self.signing_key = RSAKey.import_key(_read_private(key_path))
        self.kid = self.signing_key.thumbprint()
        self.signing_key = RSAKey.import_key(_read_private(key_path), {"kid": self.kid, "alg": ALG, "use": "sig"})
        secret_path = self.dir / HMAC_SECRET_FILE
        if not secret_path.exists():
            _write_once(secret_path, secrets.token_bytes(32))
        self._secret = _read_private(secret_path)
        if len(self._secret) < 32:
            raise ValueError(f"{secret_path}: HMAC secret too short ({len(self._secret)} bytes, need 32)")

    def public_jwk(self) -> dict:
        """The public signing key as a JWK (with kid, alg, use)."""
        return {**self.signing_key.as_dict(private=False), "kid": self.kid, "alg": ALG, "use": "sig"}

    def jwks(self) -> dict:
        """The JWKS document served at /oauth/jwks.json."""
        return {"keys": [self.public_jwk()]}

    def verify_keyset(self) -> KeySet:
        """The public keys tokens are checked against."""
        return KeySet([RSAKey.import_key(self.public_jwk())])

    def subkey(self, purpose: str) -> bytes:
        """An HMAC key for one purpose (HLS URLs, CSRF, state cookies), derived from the secret."""
        return hmac.new(self._secret, purpose.encode(), hashlib.sha256).digest()
