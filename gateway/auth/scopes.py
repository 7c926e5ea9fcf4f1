"""Lookout's scopes and what each one grants.

- `admin`: everything (all cameras, detections, user management).
- `detections:read`: the detection API (of the cameras one may view).
- `camera:<id>:view`: one camera's status, playlist and segments; `camera:*:view`: every camera.
- `openid`, `profile`: ask for identity only (grant no data).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pipeline.config import CAMERA_ID_RE

ADMIN = "admin"
DETECTIONS_READ = "detections:read"
ALL_CAMERAS = "camera:*:view"
IDENTITY = ("openid", "profile")
ROLES = ("admin", "viewer")
_CAMERA_SCOPE_RE = re.compile(r"^camera:([^:]+):view$")


def camera_scope(camera_id: str) -> str:
    """The scope that lets one watch `camera_id`."""
    return f"camera:{camera_id}:view"


def check_scope(scope: str) -> str:
    """Return `scope` if Lookout knows it, else raise ValueError naming it."""
    if scope in (ADMIN, DETECTIONS_READ, ALL_CAMERAS, *IDENTITY):
        return scope
    m = _CAMERA_SCOPE_RE.match(scope)
    if m and CAMERA_ID_RE.match(m.group(1)):
        return scope
    raise ValueError(f"unknown scope {scope!r} (known: admin, detections:read, camera:<id>:view, camera:*:view)")


def parse(scope: str | Iterable[str] | None) -> set[str]:
    """A space-separated scope string (or an iterable) as a set, every scope checked."""
    if scope is None:
        return set()
    items = scope.split() if isinstance(scope, str) else list(scope)
    return {check_scope(s) for s in items}


def to_str(scopes: Iterable[str]) -> str:
    """Scopes as the sorted space-separated string used in tokens."""
    return " ".join(sorted(set(scopes)))


def for_role(role: str, cameras: Iterable[str] = (), detections: bool = True) -> set[str]:
    """The scopes of a user or client with `role` limited to `cameras` ('*' for all)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
    if role == "admin":
        return {ADMIN, DETECTIONS_READ, ALL_CAMERAS}
    out = {ALL_CAMERAS if c == "*" else check_scope(camera_scope(c)) for c in cameras}
    if detections:
        out.add(DETECTIONS_READ)
    return out


def grants(have: Iterable[str], need: str) -> bool:
    """True when the scopes `have` include `need` (admin includes all, camera:*:view every camera)."""
    have = set(have)
    if ADMIN in have or need in have:
        return True
    return bool(_CAMERA_SCOPE_RE.match(need)) and ALL_CAMERAS in have


def narrow(requested: Iterable[str], allowed: Iterable[str]) -> set[str]:
    """What both grant (e.g. camera:*:view narrowed by camera:a:view is camera:a:view);
    identity scopes pass through."""
    requested, allowed = set(requested), set(allowed)
    return {s for s in requested if s in IDENTITY or grants(allowed, s)} | {
        s for s in allowed if s not in IDENTITY and grants(requested, s)
    }


def cameras_of(scopes: Iterable[str]) -> set[str] | None:
    """Camera ids the scopes let one view; None means all of them."""
    scopes = set(scopes)
    if ADMIN in scopes or ALL_CAMERAS in scopes:
        return None
    return {m.group(1) for s in scopes if (m := _CAMERA_SCOPE_RE.match(s))}
