"""The gateway: public URL, limits, and auth (built-in OAuth or an OIDC provider)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from .base import CAMERA_ID_RE, _Model

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
ROLE_NAMES = ("admin", "viewer")
_CLAIM_RE = re.compile(r"^[A-Za-z0-9_:./-]{1,128}$")


class OidcConfig(_Model):
    """An external OpenID Connect provider (Keycloak, Auth0, Google...) used for user logins."""

    issuer: str = Field(
        description="The provider's issuer URL; discovery is read from <issuer>/.well-known/openid-configuration."
    )
    client_id: str = Field(min_length=1, max_length=256, description="Lookout's client id at the provider.")
    client_secret: SecretStr | None = Field(
        None, description="Lookout's client secret at the provider; default: $LOOKOUT_OIDC_CLIENT_SECRET."
    )
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email"],
        min_length=1,
        max_length=32,
        description="Scopes asked of the provider at login ('openid' is required).",
    )
    audience: str | None = Field(
        None, max_length=256, description="'aud' accepted in the provider's access tokens; default: client_id."
    )
    username_claim: str = Field(
        "preferred_username", description="Claim used as the Lookout user name ('sub' if absent)."
    )
    roles_claim: str = Field(
        "groups", description="Claim holding the user's groups/roles; dots walk into objects (e.g. realm_access.roles)."
    )
    role_map: dict[str, Literal["admin", "viewer"]] = Field(
        default_factory=dict, description="Group/role value at the provider -> Lookout role."
    )
    camera_map: dict[str, list[str]] = Field(
        default_factory=dict, description="Group/role value -> camera ids a viewer in it may watch ('*': all)."
    )
    http_timeout_s: float = Field(10.0, gt=0, le=120, description="Timeout of calls to the provider.")

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, v: str) -> str:
        if not v.startswith(("https://", "http://127.0.0.1", "http://localhost", "http://[::1]")):
            raise ValueError(f"oidc issuer must be an https:// URL (http only on loopback), got {v!r}")
        return v.rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _check_scopes(cls, v: list[str]) -> list[str]:
        if "openid" not in v:
            raise ValueError(f"oidc scopes must include 'openid', got {v!r}")
        return v

    @field_validator("username_claim", "roles_claim")
    @classmethod
    def _check_claim(cls, v: str) -> str:
        if not _CLAIM_RE.match(v):
            raise ValueError(f"claim name must match {_CLAIM_RE.pattern}, got {v!r}")
        return v

    @field_validator("camera_map")
    @classmethod
    def _check_cameras(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for group, cams in v.items():
            for c in cams:
                if c != "*" and not CAMERA_ID_RE.match(c):
                    raise ValueError(f"camera_map[{group!r}]: invalid camera id {c!r}")
        return v


class AuthConfig(_Model):
    """Who may use the gateway: the built-in OAuth server, an external OIDC provider, or none (loopback only)."""

    mode: Literal["builtin", "oidc", "none"] = Field(
        "builtin",
        description="builtin: Lookout's own OAuth 2.1 server and users; oidc: users log in at an external "
        "OpenID Connect provider (machine clients still use the built-in server); none: no auth, "
        "only allowed when gateway.public_url is a loopback address, and then only loopback "
        "clients are served.",
    )
    db_path: str = Field(
        "data/lookout-auth.sqlite3", description="SQLite file with users, clients, sessions and tokens."
    )
    key_dir: str = Field(
        "data/lookout-keys",
        description="Directory (mode 0700) with the token signing key and the HMAC secret, made on first start.",
    )
    issuer: str | None = Field(None, description="'iss' of Lookout's tokens; default: gateway.public_url.")
    audience: str = Field("lookout", min_length=1, max_length=256, description="'aud' of Lookout's access tokens.")
    access_token_ttl_s: int = Field(300, ge=30, le=3600, description="Lifetime of an access token (JWT).")
    refresh_token_ttl_s: int = Field(
        7 * 86400, ge=300, le=90 * 86400, description="Lifetime of a refresh token (rotated on every use)."
    )
    auth_code_ttl_s: int = Field(60, ge=10, le=600, description="Lifetime of an authorization code.")
    session_ttl_s: int = Field(12 * 3600, ge=300, le=30 * 86400, description="Lifetime of a browser session.")
    hls_url_ttl_s: int = Field(120, ge=10, le=3600, description="Lifetime of signed HLS segment URLs in playlists.")
    hls_link_ttl_s: int = Field(
        3600,
        ge=60,
        le=86400,
        description="Lifetime of a signed playlist link for native players (/api/cameras/<id>/hls-link).",
    )
    cookie_name: str = Field("lookout_session", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Session cookie name.")
    cookie_secure: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Secure flag of cookies; auto: set when the request came over https (or X-Forwarded-Proto: "
        "https from one of gateway.trusted_proxies).",
    )
    allow_plain_http: bool = Field(
        False,
        description="Accept logins and token requests over plain http from non-loopback hosts (else TLS via a proxy is required).",
    )
    admin_username: str = Field(
        "admin", pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="The admin created on first start."
    )
    admin_password: SecretStr | None = Field(
        None, description="First-start admin password; default: $LOOKOUT_ADMIN_PASSWORD, else random and logged once."
    )
    login_max_failures: int = Field(
        5,
        ge=1,
        le=1000,
        description="Failed logins for one user name from one client address (and failed client "
        "secrets of one client) before that pair is locked out.",
    )
    login_lockout_s: int = Field(300, ge=1, le=86400, description="How long a lock-out lasts.")
    login_max_failures_per_address: int = Field(
        20,
        ge=1,
        le=100_000,
        description="Failed logins (and client secrets) from one client address, whatever the user name, before "
        "that address is locked out; not applied behind Ray Serve's HAProxy (no client address).",
    )
    login_max_concurrent_checks: int = Field(
        2,
        ge=1,
        le=64,
        description="Password checks (scrypt, ~64 MiB and a CPU core each) one gateway process runs at once; "
        "further logins get 503 with Retry-After at once.",
    )
    revocation_check_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="How long a gateway process caches the revocations of users, clients and grants (access "
        "tokens issued before one stop working within this time in every replica).",
    )
    max_body_bytes: int = Field(65536, ge=1024, le=10 * 1024 * 1024, description="Largest request body accepted.")
    oidc: OidcConfig | None = Field(None, description="The external provider (mode: oidc).")

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("https://", "http://")):
            raise ValueError(f"issuer must be an http(s) URL, got {v!r}")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _check_mode(self) -> "AuthConfig":
        if self.mode == "oidc" and self.oidc is None:
            raise ValueError("auth mode 'oidc' needs the `oidc` section (issuer, client_id, ...)")
        return self


class GatewayConfig(_Model):
    """The HTTP gateway."""

    public_url: str = Field(
        "http://127.0.0.1:8000", description="Where users reach the gateway (printed links; default token issuer)."
    )
    stale_after_s: float = Field(10.0, gt=0, le=3600, description="A camera not heard from this long is 'failed'.")
    max_ongoing_requests: int = Field(
        1000,
        ge=8,
        le=100_000,
        description="Requests one gateway replica serves at once (HLS viewers, SSE streams, LL-HLS blocking "
        "reloads each hold one); Serve's default of 5 queues viewers for seconds.",
    )
    upload_max_bytes: int = Field(
        8 * 2**20, ge=1024, le=64 * 2**20, description="Largest image accepted by POST /api/detect."
    )
    upload_max_pixels: int = Field(
        4096 * 4096,
        ge=64,
        le=4096 * 4096,
        description="Most pixels (width x height, read from the image header before decoding) of an image "
        "POST /api/detect accepts; each side must also be 8..4096 px.",
    )
    max_concurrent_decodes: int = Field(
        2,
        ge=1,
        le=64,
        description="Uploaded images decoded at once per gateway process (off the event loop); "
        "more wait up to 5 s, then get 503 with Retry-After.",
    )
    max_streams: int = Field(
        200,
        ge=1,
        le=10_000,
        description="Server-sent event streams (detections and events) one gateway process holds at once; "
        "beyond it 503 with Retry-After. Each holds one Redis connection: keep it below "
        "bus.redis_max_connections.",
    )
    max_streams_per_caller: int = Field(
        8,
        ge=1,
        le=1000,
        description="Server-sent event streams one caller (a user, or an API client) holds at once per gateway "
        "process; beyond it 429 with Retry-After, so one caller cannot take the streams of others.",
    )
    max_requests_per_caller: int = Field(
        24,
        ge=2,
        le=10_000,
        description="API requests (/api/…, streams included) one authenticated caller has in work at once per "
        "gateway process; beyond it 429 with Retry-After, so one caller's burst cannot queue the "
        "others' playlists and segments behind it (the gateway works on ~40 at once).",
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        max_length=256,
        description="Addresses/CIDRs of reverse proxies whose X-Forwarded-For/-Proto headers are believed; "
        "from any other peer they are ignored. Default: loopback (a proxy on the same host).",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Authentication and authorization.")

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, v: list[str]) -> list[str]:
        import ipaddress

        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {net!r} is not an IP address or CIDR") from None
        return v

    @model_validator(mode="after")
    def _check_auth_none(self) -> "GatewayConfig":
        from urllib.parse import urlsplit

        host = urlsplit(self.public_url).hostname or ""
        if self.auth.mode == "none" and host not in LOOPBACK_HOSTS and not host.startswith("127."):
            raise ValueError(
                f"auth mode 'none' is only allowed on loopback, but public_url is {self.public_url!r} "
                "(use mode builtin or oidc)"
            )
        return self

    @property
    def issuer(self) -> str:
        """The `iss` of Lookout's own tokens."""
        return self.auth.issuer or self.public_url.rstrip("/")
