"""Signed, short-lived HLS URLs for players that cannot send a header or cookie.

A signature covers the camera id and an expiry: `?exp=<unix s>&sig=<HMAC-SHA256>`. It opens
that one camera's playlist and segments until `exp`, nothing else. A recorded segment's URL (in a
VOD playlist) is signed for that one object's key instead. Playlists served by the
gateway get their segment URIs rewritten with fresh signatures, so a native player that was
handed a signed playlist link (GET /api/cameras/<id>/hls-link) can fetch every segment.
"""

from __future__ import annotations

import re
import time

from gateway.auth import signed

_SEGMENT_LINE_RE = re.compile(r"^[A-Za-z0-9_.-]+\.(ts|m4s|mp4)$")
_URI_ATTR_RE = re.compile(r'URI="([A-Za-z0-9_.-]+\.(?:ts|m4s|mp4))"')
MAX_CLOCK_SKEW_S = 60


class HlsSigner:
    """Makes and checks signed HLS URLs with one derived key."""

    def __init__(self, key: bytes, segment_ttl_s: int, link_ttl_s: int):
        self.key, self.segment_ttl_s, self.link_ttl_s = key, segment_ttl_s, link_ttl_s

    def _message(self, camera_id: str, exp: int) -> str:
        return f"hls|{camera_id}|{exp}"

    def query(self, camera_id: str, ttl_s: int | None = None) -> str:
        """The `exp=…&sig=…` query string opening `camera_id` for `ttl_s` (default: segment TTL)."""
        exp = int(time.time()) + (ttl_s or self.segment_ttl_s)
        return f"exp={exp}&sig={signed.mac(self.key, self._message(camera_id, exp))}"

    def verify(self, camera_id: str, exp: str | None, sig: str | None) -> bool:
        """True when `sig` opens `camera_id` now (not expired, not from further ahead than allowed)."""
        exp_i = self._valid_exp(exp, sig)
        return exp_i is not None and signed.check_mac(self.key, self._message(camera_id, exp_i), sig)

    def _valid_exp(self, exp: str | None, sig: str | None) -> int | None:
        """`exp` as an int when it has not passed and is not further ahead than any URL we make, else None."""
        if not exp or not sig or not exp.isdigit() or len(exp) > 12:
            return None
        exp_i, now = int(exp), time.time()
        if exp_i < now or exp_i > now + max(self.segment_ttl_s, self.link_ttl_s) + MAX_CLOCK_SKEW_S:
            return None
        return exp_i

    def recording_query(self, key: str, ttl_s: int | None = None, now_s: float | None = None) -> str:
        """The `exp=…&sig=…` query string opening the recorded object `key` ("<camera>/…") alone, for
        `ttl_s` (default: the playlist link TTL: a VOD playlist is loaded once and played for long)."""
        exp = int(time.time() if now_s is None else now_s) + (ttl_s or self.link_ttl_s)
        return f"exp={exp}&sig={signed.mac(self.key, f'rec|{key}|{exp}')}"

    def verify_recording(self, key: str, exp: str | None, sig: str | None) -> bool:
        """True when `sig` opens the recorded object `key` now."""
        exp_i = self._valid_exp(exp, sig)
        return exp_i is not None and signed.check_mac(self.key, f"rec|{key}|{exp_i}", sig)

    def rewrite_playlist(self, text: str, camera_id: str) -> str:
        """The playlist with every segment URI (and EXT-X-MAP URI) carrying a fresh signature."""
        q = self.query(camera_id)
        out = []
        for line in text.splitlines():
            if _SEGMENT_LINE_RE.match(line):
                line = f"{line}?{q}"
            elif line.startswith("#") and 'URI="' in line:
                line = _URI_ATTR_RE.sub(lambda m: f'URI="{m.group(1)}?{q}"', line)
            out.append(line)
        return "\n".join(out) + ("\n" if text.endswith("\n") else "")

    def playlist_link(self, camera_id: str) -> tuple[str, int]:
        """A signed playlist path for a native player and its expiry (unix s)."""
        q = self.query(camera_id, self.link_ttl_s)
        return f"/hls/{camera_id}/index.m3u8?{q}", int(q.split("&")[0][4:])
