"""First start and wiring: the database, the keys, the first admin, and the AuthContext.

The first start (no user in the database) creates user `admin_username` with the password from
the config, else $LOOKOUT_ADMIN_PASSWORD, else a random one that is logged once, never again.
Safe to run on every start and from several gateway replicas at once.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from gateway.auth import scopes as sc
from gateway.auth.hls_signing import HlsSigner
from gateway.auth.keys import KeyStore
from gateway.auth.server import WEB_CLIENT_ID, WEB_REDIRECT_URI, LookoutAuthServer
from gateway.auth.store import AuthStore, User
from gateway.auth.tokens import AccessTokens, Revocations
from pipeline.config import AuthConfig, PipelineArgs

if TYPE_CHECKING:
    from gateway.auth.oidc import OidcLogin

log = logging.getLogger("lookout.auth")
ADMIN_PASSWORD_ENV = "LOOKOUT_ADMIN_PASSWORD"


def ensure_admin(store: AuthStore, cfg: AuthConfig, logger: logging.Logger = log) -> bool:
    """Create the first admin when there is no user at all; True when this call did."""
    with store.transaction():
        if store.count_users() > 0:
            return False
        given = cfg.admin_password.get_secret_value() if cfg.admin_password else os.environ.get(ADMIN_PASSWORD_ENV)
        password = given or secrets.token_urlsafe(18)
        store.add_user(cfg.admin_username, password, role="admin")
    if given:
        logger.info("first start: created admin user %r with the configured password", cfg.admin_username)
    else:
        logger.warning(
            "first start: created admin user %r with password %s  (shown only this once; change it "
            "with `lookout users passwd %s`)",
            cfg.admin_username,
            password,
            cfg.admin_username,
        )
    return True


def ensure_web_client(store: AuthStore) -> None:
    """The web page's own public OAuth client (code + PKCE, redirect back to /auth/callback)."""
    with store.transaction():
        if store.get_client(WEB_CLIENT_ID) is None:
            store.add_client(
                "Lookout web page",
                {sc.ADMIN, sc.DETECTIONS_READ, sc.ALL_CAMERAS},
                public=True,
                redirect_uris=[WEB_REDIRECT_URI],
                client_id=WEB_CLIENT_ID,
            )


@dataclass
class AuthContext:
    """Everything the auth layer of one gateway process needs."""

    cfg: AuthConfig
    issuer: str
    public_url: str = "http://127.0.0.1:8000"  # gateway.public_url: every link and redirect it builds
    store: AuthStore | None = None
    keys: KeyStore | None = None
    tokens: AccessTokens | None = None
    hls: HlsSigner | None = None
    server: LookoutAuthServer | None = None
    oidc: OidcLogin | None = None  # in mode oidc

    @property
    def session_cookie(self) -> str:
        return self.cfg.cookie_name

    @property
    def sso_cookie(self) -> str:
        return f"{self.cfg.cookie_name}_login"

    @property
    def csrf_cookie(self) -> str:
        return f"{self.cfg.cookie_name}_csrf"

    @property
    def flow_cookie(self) -> str:
        return f"{self.cfg.cookie_name}_flow"

    def sso_user(self, conn: HTTPConnection) -> User | None:
        """The user logged in at the authorization server (login cookie), if any."""
        assert self.store is not None  # only called with auth on, where bootstrap sets it
        row = self.store.get_session(conn.cookies.get(self.sso_cookie, ""), "sso")
        return self.store.get_user(row.username) if row else None

    def web_session(self, sid: str) -> tuple[str, str, str, frozenset[str]] | None:
        """(name, kind, via, scopes) of a live web session; a local user's scopes are re-read,
        so a removed user or a narrowed role takes effect at once."""
        assert self.store is not None  # only called with auth on, where bootstrap sets it
        row = self.store.get_session(sid, "web")
        if row is None:
            return None
        scopes = set(row.scope.split())
        if row.username.startswith("oidc:"):  # mapped from the provider's claims at login
            return row.username[5:], "user", "session", frozenset(scopes)
        user = self.store.get_user(row.username)
        if user is None:
            return None
        scopes = sc.narrow(scopes, user.scopes)
        return row.username, "user", "session", frozenset(scopes)


def bootstrap(args: PipelineArgs, logger: logging.Logger = log) -> AuthContext:
    """Open (or create) the auth database and keys, make the first admin, build the AuthContext."""
    cfg = args.gateway.auth
    ctx = AuthContext(cfg=cfg, issuer=args.gateway.issuer, public_url=args.gateway.public_url.rstrip("/"))
    if cfg.mode == "none":
        logger.warning("gateway auth is OFF (mode none): serving loopback clients only")
        return ctx
    ctx.store = AuthStore(args.resolve_path(cfg.db_path))
    ctx.keys = KeyStore(args.resolve_path(cfg.key_dir))
    ctx.tokens = AccessTokens(
        ctx.keys,
        ctx.issuer,
        cfg.audience,
        cfg.access_token_ttl_s,
        is_revoked=Revocations(ctx.store, cfg.revocation_check_s),
    )
    ctx.hls = HlsSigner(ctx.keys.subkey("hls"), cfg.hls_url_ttl_s, cfg.hls_link_ttl_s)
    ctx.server = LookoutAuthServer(ctx.store, ctx.tokens, cfg)
    ensure_web_client(ctx.store)
    if cfg.mode == "builtin":
        ensure_admin(ctx.store, cfg, logger)
    else:
        from gateway.auth.oidc import OidcLogin

        assert cfg.oidc is not None  # mode oidc requires gateway.auth.oidc (checked by AuthConfig)
        ctx.oidc = OidcLogin(cfg.oidc, ctx)
    ctx.store.purge_expired()
    return ctx
