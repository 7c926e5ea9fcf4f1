"""Who watches which camera (for on-demand encoding), and what the page needs to know of a stream.

The gateway touches a camera's viewer key on every playlist request; the key expires after
`hls.on_demand_idle_s`, so "watched" means "a playlist was asked for within that time".
"""

from __future__ import annotations

import json

from pipeline import keys

STREAM_INFO_TTL_S = 3600


def viewers_key(camera_id: str) -> str:
    return keys.hls_viewers(camera_id)


def stream_info_key(camera_id: str) -> str:
    return keys.hls_info(camera_id)


class ViewerTracker:
    """Marks cameras as watched (gateway) and asks whether they are (encoder)."""

    def __init__(self, client, idle_s: float):
        if not idle_s > 0:
            raise ValueError(f"idle_s must be > 0, got {idle_s!r}")
        self.client = client
        self.idle_ms = int(idle_s * 1000)

    def touch(self, camera_id: str) -> None:
        self.client.set(viewers_key(camera_id), b"1", px=self.idle_ms)

    def watched(self, camera_id: str) -> bool:
        return bool(self.client.exists(viewers_key(camera_id)))

    def remaining_s(self, camera_id: str) -> float:
        """Seconds until the camera counts as unwatched (0 when it is)."""
        return max(0, self.client.pttl(viewers_key(camera_id))) / 1000


def put_stream_info(
    client, camera_id: str, width_px: int, height_px: int, boxes: str, fps: float | None = None, **extra
) -> None:
    """The source frame size, box mode and frame rate, so the page can draw boxes (given in source
    pixels) over the right frame; `extra` fields (e.g. the encoder's last error) go along."""
    info = {"source_width_px": width_px, "source_height_px": height_px, "boxes": boxes, **extra}
    if fps:
        info["fps"] = fps
    client.set(stream_info_key(camera_id), json.dumps(info), ex=STREAM_INFO_TTL_S)


def get_stream_info(client, camera_id: str) -> dict | None:
    raw = client.get(stream_info_key(camera_id))
    return None if raw is None else json.loads(raw)
