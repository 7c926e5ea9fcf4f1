"""Core value types that travel between the stages of the pipeline."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterator

import numpy as np
from pydantic import Field

MAX_UNIX_S = 253402300799.0  # 9999-12-31T23:59:59Z: times past it (1e308, inf) only overflow
UnixTimeS = Annotated[float, Field(ge=0, le=MAX_UNIX_S, allow_inf_nan=False)]
"""A time parameter in Unix seconds: finite, from 1970 to the year 9999 (query models use it)."""


@dataclass(frozen=True)
class FrameRef:
    """A pointer to one captured frame on the frame bus; the only thing passed between stages.

    `source_size`: the camera's own (width, height) when the bus image was scaled down from it
    (detections are in source pixels); None when the bus image is the source's size.
    `motion_box_px`: where the frame moved (xyxy, bus image pixels) when the camera's motion gate sent it
    for that; the detector may then look at a strip around it only (pipeline.regions)."""

    camera_id: str
    seq: int
    captured_at: float
    pts_s: float = 0.0
    entry_id: str = ""
    source_size: tuple[int, int] | None = None
    motion_box_px: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if not self.camera_id:
            raise ValueError(f"camera_id must be a non-empty string, got {self.camera_id!r}")
        if self.seq < 0:
            raise ValueError(f"seq must be >= 0, got {self.seq!r}")

    def age_s(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.captured_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "camera_id": self.camera_id,
            "seq": self.seq,
            "captured_at": self.captured_at,
            "pts_s": self.pts_s,
            "entry_id": self.entry_id,
            **({"source_size": list(self.source_size)} if self.source_size else {}),
            **({"motion_box_px": list(self.motion_box_px)} if self.motion_box_px else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrameRef":
        return cls(
            camera_id=str(d["camera_id"]),
            seq=int(d["seq"]),
            captured_at=float(d["captured_at"]),
            pts_s=float(d.get("pts_s", 0.0)),
            entry_id=str(d.get("entry_id", "")),
            source_size=(int(size[0]), int(size[1])) if (size := d.get("source_size")) else None,
            motion_box_px=(int(box[0]), int(box[1]), int(box[2]), int(box[3]))
            if (box := d.get("motion_box_px"))
            else None,
        )


def _column(name: str, value: Any, dtype: Any, n: int | None, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail:
        raise ValueError(
            f"{name} must have shape (n, {', '.join(map(str, shape_tail))}), got {arr.shape}"
            if shape_tail
            else f"{name} must have shape (n,), got {arr.shape}"
        )
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows but xyxy has {n}")
    return arr


@dataclass
class Detections:
    """Detections of one frame as numpy columns; boxes are xyxy in source-image pixels."""

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    tracker_id: np.ndarray | None = None
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xyxy = _column("xyxy", self.xyxy, np.float32, None, (4,))
        n = len(self.xyxy)
        self.confidence = _column("confidence", self.confidence, np.float32, n)
        self.class_id = _column("class_id", self.class_id, np.int32, n)
        if self.tracker_id is not None:
            self.tracker_id = _column("tracker_id", self.tracker_id, np.int64, n)
        for key, value in self.data.items():
            value = np.asarray(value)
            if len(value) != n:
                raise ValueError(f"data[{key!r}] has {len(value)} rows but xyxy has {n}")
            self.data[key] = value

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: Any) -> "Detections":
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(
            xyxy=self.xyxy[index],
            confidence=self.confidence[index],
            class_id=self.class_id[index],
            tracker_id=None if self.tracker_id is None else self.tracker_id[index],
            data={k: v[index] for k, v in self.data.items()},
        )

    def __iter__(self) -> Iterator["Detections"]:
        for i in range(len(self)):
            yield self[i]

    def to_records(self, labels: list[str] | None = None) -> list[dict[str, Any]]:
        out = []
        for i in range(len(self)):
            cid = int(self.class_id[i])
            rec: dict[str, Any] = {
                "label": labels[cid] if labels and 0 <= cid < len(labels) else str(cid),
                "class_id": cid,
                "confidence": round(float(self.confidence[i]), 4),
                "box": [round(float(v), 1) for v in self.xyxy[i]],
            }
            if self.tracker_id is not None:
                rec["tracker_id"] = int(self.tracker_id[i])
            out.append(rec)
        return out

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> "Detections":
        if not records:
            return cls.empty()
        return cls(
            xyxy=np.array([r["box"] for r in records], np.float32),
            confidence=np.array([r["confidence"] for r in records], np.float32),
            class_id=np.array([r["class_id"] for r in records], np.int32),
            data={"label": np.array([r.get("label", str(r["class_id"])) for r in records], object)},
        )


@dataclass
class FrameResult:
    """What the detector made of one frame."""

    ref: FrameRef
    detections: Detections
    model: str
    timings: dict[str, float] = field(default_factory=dict)


class CameraState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    FAILED = "failed"


@dataclass
class CameraStatus:
    """Health of one camera's ingest, as shown by the API."""

    camera_id: str
    state: CameraState
    fps: float = 0.0
    last_error: str | None = None
    since: float = field(default_factory=time.time)
    frames: int = 0
    reconnects: int = 0
    updated_at: float = field(default_factory=time.time)
    nominal_fps: float | None = None  # the rate the source delivers (the configured fps, else the source's own)

    def to_dict(self) -> dict[str, Any]:
        return {
            "camera_id": self.camera_id,
            "state": self.state.value,
            "fps": round(self.fps, 2),
            "last_error": self.last_error,
            "since": self.since,
            "frames": self.frames,
            "reconnects": self.reconnects,
            "updated_at": self.updated_at,
            "nominal_fps": self.nominal_fps,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CameraStatus":
        return cls(
            camera_id=str(d["camera_id"]),
            state=CameraState(d["state"]),
            fps=float(d.get("fps", 0.0)),
            last_error=d.get("last_error") or None,
            since=float(d.get("since", 0.0)),
            frames=int(d.get("frames", 0)),
            reconnects=int(d.get("reconnects", 0)),
            updated_at=float(d.get("updated_at", 0.0)),
            nominal_fps=float(d["nominal_fps"]) if d.get("nominal_fps") else None,
        )
