"""`lookout users …` and `lookout clients …`: manage the auth database from the command line."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sys
from pathlib import Path

DEFAULT_DB = "data/lookout-auth.sqlite3"


def db_path(a: argparse.Namespace) -> str:
    """--db, else gateway.auth.db_path of --config (default serve_config.yaml if present), else the default."""
    if a.db:
        return a.db
    config = a.config or ("serve_config.yaml" if Path("serve_config.yaml").is_file() else None)
    if config:
        from pipeline.config_file import load_app_args
        from pipeline.config import parse_args

        args = parse_args(load_app_args(config))
        return args.resolve_path(args.gateway.auth.db_path)
    return DEFAULT_DB


def _store(a: argparse.Namespace):
    from gateway.auth.store import AuthStore

    return AuthStore(db_path(a))


def _read_password(a: argparse.Namespace, who: str) -> tuple[str, bool]:
    """(password, generated): from stdin (--password-stdin), a prompt on a terminal, or random."""
    if a.password_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    if sys.stdin.isatty():
        first = getpass.getpass(f"new password for {who}: ")
        if first != getpass.getpass("again: "):
            raise ValueError("the two passwords differ")
        return first, False
    return secrets.token_urlsafe(18), True


def _scopes(a: argparse.Namespace) -> set[str]:
    from gateway.auth import scopes as sc

    cams = [c.strip() for c in (a.cameras or "").split(",") if c.strip()]
    out = sc.for_role(a.role, cams, detections=not a.no_detections)
    return out | sc.parse(a.scope or [])


def users_add(a: argparse.Namespace) -> int:
    store = _store(a)
    password, generated = _read_password(a, a.name)
    user = store.add_user(a.name, password, role=a.role, scopes=_scopes(a))
    print(f"added user {user.username} ({user.role}): {' '.join(sorted(user.scopes))}")
    if generated:
        print(f"password: {password}  (shown only this once)")
    return 0


def users_list(a: argparse.Namespace) -> int:
    users = _store(a).list_users()
    if a.json:
        print(json.dumps([{"username": u.username, "role": u.role, "scopes": sorted(u.scopes)} for u in users]))
    else:
        for u in users:
            print(f"{u.username:24} {u.role:7} {' '.join(sorted(u.scopes))}")
    return 0


def users_remove(a: argparse.Namespace) -> int:
    _store(a).remove_user(a.name)
    print(f"removed user {a.name}")
    return 0


def users_passwd(a: argparse.Namespace) -> int:
    store = _store(a)
    if store.get_user(a.name) is None:
        raise ValueError(f"no user {a.name!r}")
    password, generated = _read_password(a, a.name)
    store.set_password(a.name, password)
    print(f"password of {a.name} changed; their sessions and refresh tokens are revoked")
    if generated:
        print(f"password: {password}  (shown only this once)")
    return 0


def clients_add(a: argparse.Namespace) -> int:
    row, secret = _store(a).add_client(
        a.name, _scopes(a), public=a.public, redirect_uris=a.redirect_uri or [], client_id=a.client_id
    )
    print(f"client_id: {row.client_id}")
    if secret:
        print(f"client_secret: {secret}  (shown only this once)")
    print(f"grants: {' '.join(row.grant_types)}; scopes: {' '.join(sorted(row.scopes))}")
    return 0


def clients_list(a: argparse.Namespace) -> int:
    clients = _store(a).list_clients()
    if a.json:
        print(
            json.dumps(
                [
                    {
                        "client_id": c.client_id,
                        "name": c.name,
                        "public": c.is_public,
                        "grant_types": list(c.grant_types),
                        "redirect_uris": list(c.redirect_uris),
                        "scopes": sorted(c.scopes),
                    }
                    for c in clients
                ]
            )
        )
    else:
        for c in clients:
            print(
                f"{c.client_id:24} {'public' if c.is_public else 'secret':6} {c.name!r} "
                f"grants={','.join(c.grant_types)} scopes={' '.join(sorted(c.scopes))}"
            )
    return 0


def clients_remove(a: argparse.Namespace) -> int:
    from gateway.auth.server import WEB_CLIENT_ID

    if a.client_id == WEB_CLIENT_ID:
        raise ValueError(f"{WEB_CLIENT_ID!r} is the web page's own client and cannot be removed")
    _store(a).remove_client(a.client_id)
    print(f"removed client {a.client_id}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=os.environ.get("LOOKOUT_AUTH_DB"),
        help="auth database (default: gateway.auth.db_path of --config, or data/lookout-auth.sqlite3)",
    )
    p.add_argument("--config", default=None, help="serve_config.yaml to read gateway.auth.db_path from")


def _grants(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", choices=["viewer", "admin"], default="viewer")
    p.add_argument("--cameras", default="", help="comma-separated camera ids ('*': all) a viewer may watch")
    p.add_argument("--no-detections", action="store_true", help="no access to the detection API")
    p.add_argument("--scope", action="append", help="an extra scope (repeatable), e.g. camera:door:view")


def add_subcommands(sub) -> None:
    """Add `users` and `clients` to the `lookout` command's subparsers."""
    users = sub.add_parser("users", help="manage users (log in to the web page)").add_subparsers(
        dest="users_command", required=True
    )
    p = users.add_parser("add", help="add a user")
    p.add_argument("name")
    _grants(p)
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin (else prompt/random)")
    _common(p)
    p.set_defaults(func=users_add)
    p = users.add_parser("list", help="list users")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(func=users_list)
    p = users.add_parser("remove", help="remove a user (ends their sessions)")
    p.add_argument("name")
    _common(p)
    p.set_defaults(func=users_remove)
    p = users.add_parser("passwd", help="set a user's password (ends their sessions)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    _common(p)
    p.set_defaults(func=users_passwd)

    clients = sub.add_parser("clients", help="manage OAuth clients (services, scripts, apps)").add_subparsers(
        dest="clients_command", required=True
    )
    p = clients.add_parser("add", help="register a client; prints its id and secret once")
    p.add_argument("name")
    _grants(p)
    p.add_argument("--public", action="store_true", help="a public client (code+PKCE, no secret)")
    p.add_argument("--redirect-uri", action="append", help="allowed redirect URI (exact match; repeatable)")
    p.add_argument("--client-id", default=None, help="choose the id (default: random lk-…)")
    _common(p)
    p.set_defaults(func=clients_add)
    p = clients.add_parser("list", help="list clients")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(func=clients_list)
    p = clients.add_parser("remove", help="remove a client (revokes its refresh tokens)")
    p.add_argument("client_id")
    _common(p)
    p.set_defaults(func=clients_remove)
