"""HTTP helpers of the auth layer: body limits, bounded forms, https detection, cookies, errors."""

from __future__ import annotations

from typing import Literal

import ipaddress
import json
import os
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from pipeline.config import AuthConfig


class BodyTooLarge(Exception):
    """The request body is larger than allowed."""


class BodyLimitMiddleware:
    """Answers 413 (JSON) to any request whose body is larger than `max_bytes`."""

    def __init__(self, app, max_bytes: int, path_limits: dict[str, int] | None = None):
        self.app, self.max_bytes, self.path_limits = app, max_bytes, dict(path_limits or {})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_bytes = self.path_limits.get(scope.get("path", ""), self.max_bytes)  # e.g. image uploads
        too_big = JSONResponse({"error": "request body too large", "limit_bytes": max_bytes}, status_code=413)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return await JSONResponse({"error": "bad Content-Length"}, status_code=400)(scope, receive, send)
                if length > max_bytes:
                    return await too_big(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await too_big(scope, receive, send)


async def read_form(request: Request, max_bytes: int) -> dict[str, list[str]]:
    """An application/x-www-form-urlencoded body (at most `max_bytes`) as name -> values."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method != "POST":
        return {}
    if ctype != "application/x-www-form-urlencoded":
        raise ValueError(f"expected Content-Type application/x-www-form-urlencoded, got {ctype or 'none'!r}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BodyTooLarge()
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=100)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"malformed form body: {exc}") from None
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


def first(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def behind_haproxy() -> bool:
    """Whether Ray Serve's HAProxy mode fronts the gateway: then every request comes from HAProxy's
    address, and HAProxy adds no X-Forwarded-For (one that arrives is the client's own claim)."""
    return os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"


def _ip(host: str | None):
    try:
        return ipaddress.ip_address((host or "").strip("[]"))
    except ValueError:
        return None


class TrustedProxies:
    """The peers whose X-Forwarded-* headers are believed (gateway.trusted_proxies)."""

    def __init__(self, networks: list[str]):
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def __contains__(self, host: str | None) -> bool:
        ip = _ip(host)
        return ip is not None and any(ip in net for net in self.networks)


class ForwardedMiddleware:
    """Resolves the real client address and scheme once per request: from X-Forwarded-For/-Proto
    when the peer is a trusted proxy, else from the connection itself, the headers then being
    dropped so that nothing downstream believes what any client can write."""

    HEADERS = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded")

    def __init__(self, app, trusted: TrustedProxies):
        self.app, self.trusted = app, trusted

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        peer = scope.get("client")
        headers = scope.get("headers") or []
        if peer and peer[0] in self.trusted:
            scope = dict(scope)
            values = {k: v.decode("latin-1") for k, v in headers if k in self.HEADERS}
            forwarded_for = "" if behind_haproxy() else values.get(b"x-forwarded-for", "")
            hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
            client = peer[0]
            while hops and client in self.trusted:  # the nearest hop no trusted proxy vouches for
                client = hops.pop()
            if client != peer[0] and _ip(client) is not None:
                scope["client"] = (client, 0)
            proto = values.get(b"x-forwarded-proto", "").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                scope["scheme"] = proto
        else:
            scope = {**scope, "headers": [(k, v) for k, v in headers if k not in self.HEADERS]}
        await self.app(scope, receive, send)


def client_address(conn: HTTPConnection) -> str:
    """The client's address (resolved by ForwardedMiddleware), or 'unknown'."""
    return conn.client.host if conn.client else "unknown"


def is_https(conn: HTTPConnection) -> bool:
    """True when the request came over TLS (directly, or per a trusted proxy's X-Forwarded-Proto)."""
    return conn.url.scheme == "https"


def is_loopback_client(conn: HTTPConnection) -> bool:
    """True when the client itself is on this host: its address, not the Host header it sends. Behind
    HAProxy every client has HAProxy's (loopback) address, so there the Host header decides, which
    a client can only forge to send its own credentials in the clear."""
    if behind_haproxy():
        host = (conn.url.hostname or "").strip("[]")
        return host == "localhost" or (_ip(host) is not None and _ip(host).is_loopback)
    ip = _ip(client_address(conn))
    return ip is not None and ip.is_loopback


def transport_ok(conn: HTTPConnection, cfg: AuthConfig) -> bool:
    """Whether credentials may travel over this request (https, a loopback client, or plain http allowed)."""
    return is_https(conn) or is_loopback_client(conn) or cfg.allow_plain_http


def insecure_transport_response() -> JSONResponse:
    return JSONResponse(
        {
            "error": "insecure_transport",
            "error_description": "logins and tokens need https: put a TLS reverse proxy in front of "
            "Lookout (or set gateway.auth.allow_plain_http: true)",
        },
        status_code=400,
    )


def set_cookie(
    response: Response,
    conn: HTTPConnection,
    cfg: AuthConfig,
    name: str,
    value: str,
    max_age: int,
    path: str = "/",
    samesite: Literal["lax", "strict", "none"] = "lax",
) -> None:
    """Set an HttpOnly cookie; Secure as `cfg.cookie_secure` says (auto: when the request was https)."""
    secure = cfg.cookie_secure == "always" or (cfg.cookie_secure == "auto" and is_https(conn))
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite=samesite, secure=secure)


def clear_cookie(response: Response, name: str, path: str = "/") -> None:
    response.delete_cookie(name, path=path, httponly=True, samesite="lax")


def safe_next(target: str | None, default: str = "/") -> str:
    """`target` if it is a path on this site (no scheme, host or '//'), else `default` (no open redirects)."""
    if not isinstance(target, str) or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(c in target for c in "\r\n\\") or len(target) > 2048:
        return default
    return target


def json_error(status: int, error: str, **extra) -> JSONResponse:
    """A short JSON error body."""
    return JSONResponse({"error": error, **extra}, status_code=status)


def wants_html(conn: HTTPConnection) -> bool:
    """True for a browser navigating to a page (not an API or media request)."""
    accept = conn.headers.get("accept", "")
    return "text/html" in accept and conn.headers.get("authorization") is None


def dumps(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"))
