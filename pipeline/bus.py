"""The Redis frame bus: frames (JPEG or raw) on bounded per-camera streams, and detection results.

Only `FrameRef`s travel between stages; the pixels stay here. Streams are trimmed by count
(XADD MAXLEN ~) so memory cannot grow without bound, and readers drop frames older than
`max_age_s` instead of working through a backlog.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Iterable, cast

import numpy as np
import redis

from pipeline import keys
from pipeline.config import BusConfig
from pipeline.frames import decode_frame, encode_frame, result_to_json
from pipeline.redisconn import stream_entries, stream_reads
from pipeline.types import CameraStatus, FrameRef, FrameResult

log = logging.getLogger(__name__)

DETECTIONS_MAXLEN = 2000


def source_size_of(fields: dict) -> tuple[int, int] | None:
    """The camera's own (width, height) a bus entry records, None when its image is the source's size."""
    if b"sw" not in fields:
        return None
    return int(fields[b"sw"]), int(fields[b"sh"])


def _ref_from_entry(camera_id: str, entry_id: bytes | str, fields: dict) -> FrameRef:
    return FrameRef(
        camera_id=camera_id,
        seq=int(fields[b"seq"]),
        captured_at=float(fields[b"t"]),
        pts_s=float(fields[b"pts"]),
        entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        source_size=source_size_of(fields),
    )


class FrameBus:
    """Puts and gets frames by `FrameRef`; one instance per process, thread-safe (redis-py pool)."""

    def __init__(self, client: redis.Redis, settings: BusConfig | None = None):
        self.client = client
        self.settings = settings or BusConfig()

    def put(
        self,
        camera_id: str,
        seq: int,
        image: np.ndarray,
        captured_at: float,
        pts_s: float,
        source_size: tuple[int, int] | None = None,
    ) -> FrameRef:
        """Add a frame; `source_size` is the camera's own (width, height) when `image` was scaled
        down from it (the entry records it, and the detector gives boxes in those pixels)."""
        fields: dict[str, Any] = {"seq": seq, "t": repr(captured_at), "pts": repr(pts_s)}
        if source_size is not None:
            if len(source_size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in source_size):
                raise ValueError(
                    f"camera {camera_id}: source_size must be (width, height) in pixels > 0, got {source_size!r}"
                )
            source_size = (int(source_size[0]), int(source_size[1]))
            fields.update(sw=source_size[0], sh=source_size[1])
        fields["jpg"] = encode_frame(image, self.settings)
        entry_id = cast(
            bytes,
            self.client.xadd(keys.frames(camera_id), cast(Any, fields), maxlen=self.settings.maxlen, approximate=True),
        )
        return FrameRef(camera_id, seq, captured_at, pts_s, entry_id.decode(), source_size)

    def get_frames(self, refs: Iterable[FrameRef]) -> list[tuple[bytes, tuple[int, int] | None] | None]:
        """Encoded bytes of each ref (see `decode_frame`) with the source size its entry records
        (`source_size_of`), or None where the frame was trimmed away."""
        refs = list(refs)
        pipe = self.client.pipeline(transaction=False)
        for ref in refs:
            pipe.xrange(keys.frames(ref.camera_id), ref.entry_id, ref.entry_id, count=1)
        return [
            (entries[0][1][b"jpg"], source_size_of(entries[0][1])) if entries else None
            for entries in map(stream_entries, pipe.execute())
        ]

    def get_payloads(self, refs: Iterable[FrameRef]) -> list[bytes | None]:
        """Encoded bytes of each ref (see `decode_frame`), or None where the frame was trimmed away."""
        return [None if got is None else got[0] for got in self.get_frames(refs)]

    def get(self, ref: FrameRef) -> np.ndarray | None:
        data = self.get_payloads([ref])[0]
        return None if data is None else decode_frame(data)

    def read_after(
        self, camera_id: str, last_entry_id: str, block_ms: int = 1000, count: int = 32
    ) -> list[tuple[FrameRef, bytes]]:
        """Frames newer than `last_entry_id`, oldest first (waits up to `block_ms` for one)."""
        resp = stream_reads(self.client.xread({keys.frames(camera_id): last_entry_id}, count=count, block=block_ms))
        out = []
        for _stream, entries in resp:
            for entry_id, fields in entries:
                out.append((_ref_from_entry(camera_id, entry_id, fields), fields[b"jpg"]))
        return out

    def last_entry_id(self, camera_id: str) -> str:
        """Id of the newest frame, "0-0" when there is none; start `read_after` here to get only new ones."""
        entries = stream_entries(self.client.xrevrange(keys.frames(camera_id), count=1))
        return entries[0][0].decode() if entries else "0-0"

    def latest(self, camera_id: str) -> tuple[FrameRef, bytes] | None:
        entries = stream_entries(self.client.xrevrange(keys.frames(camera_id), count=1))
        if not entries:
            return None
        entry_id, fields = entries[0]
        return _ref_from_entry(camera_id, entry_id, fields), fields[b"jpg"]

    def frame_of(self, payload: dict[str, Any]) -> tuple[FrameRef, bytes] | None:
        """The frame a detections payload (`result_to_json`) was made from, None when the bus no longer
        holds it (streams keep `maxlen` frames) or the payload does not say where it was."""
        entry_id = payload.get("frame_entry_id")
        if not entry_id:
            return None
        cam = payload["camera_id"]
        entries = stream_entries(self.client.xrange(keys.frames(cam), entry_id, entry_id, count=1))
        if not entries or int(entries[0][1][b"seq"]) != payload["seq"]:
            return None
        return _ref_from_entry(cam, *entries[0]), entries[0][1][b"jpg"]

    def is_stale(self, ref: FrameRef, now: float | None = None) -> bool:
        return ref.age_s(now) > self.settings.max_age_s


class ResultStore:
    """Detection results per camera: a bounded stream of history plus the latest one."""

    def __init__(self, client: redis.Redis, maxlen: int = DETECTIONS_MAXLEN):
        self.client = client
        self.maxlen = maxlen

    def publish(self, results: Iterable[FrameResult], labels: list[str] | None) -> None:
        pipe = self.client.pipeline(transaction=False)
        for result in results:
            payload = result_to_json(result, labels)
            cam = result.ref.camera_id
            pipe.xadd(
                keys.detections(cam), {"seq": result.ref.seq, "json": payload}, maxlen=self.maxlen, approximate=True
            )
            pipe.set(keys.detections_latest(cam), payload)
        pipe.execute()

    def latest(self, camera_id: str) -> dict[str, Any] | None:
        raw = self.client.get(keys.detections_latest(camera_id))
        return None if raw is None else json.loads(raw)

    def read_after(self, camera_id: str, last_entry_id: str, count: int = 256) -> list[tuple[str, dict[str, Any]]]:
        """Results newer than `last_entry_id` (non-blocking), oldest first."""
        entries = stream_entries(
            self.client.xrange(
                keys.detections(camera_id), min=f"({last_entry_id}" if last_entry_id != "0" else "-", count=count
            )
        )
        return [(eid.decode(), json.loads(f[b"json"])) for eid, f in entries]

    def last_entry_id(self, camera_id: str) -> str:
        entries = stream_entries(self.client.xrevrange(keys.detections(camera_id), count=1))
        return entries[0][0].decode() if entries else "0"


class StatusStore:
    """Camera statuses, written by ingest and read by the gateway."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def register(self, camera_id: str, info: dict[str, Any]) -> None:
        self.client.hset(keys.cameras(), camera_id, json.dumps(info))

    def camera_ids(self) -> list[str]:
        return sorted(k.decode() for k in cast(list[bytes], self.client.hkeys(keys.cameras())))

    def camera_info(self) -> dict[str, dict[str, Any]]:
        info = cast(dict[bytes, bytes], self.client.hgetall(keys.cameras()))
        return {k.decode(): json.loads(v) for k, v in info.items()}

    def put(self, status: CameraStatus) -> None:
        status.updated_at = time.time()
        self.client.set(keys.camera_status(status.camera_id), json.dumps(status.to_dict()))

    def get(self, camera_id: str) -> CameraStatus | None:
        raw = self.client.get(keys.camera_status(camera_id))
        return None if raw is None else CameraStatus.from_dict(json.loads(raw))
