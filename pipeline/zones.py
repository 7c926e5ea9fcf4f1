"""Zones: named polygons per camera in source-frame pixels, and which detections are inside.

A detection is inside a zone when its anchor point (bottom-center of the box by default: where
a person or a car touches the ground) lies inside the polygon; points on an edge count as
inside.
"""

from __future__ import annotations

import re
from typing import Iterable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.types import Detections

__all__ = ["ZoneConfig", "Zone", "anchor_points", "points_in_polygon", "check_zone_names", "ZONE_NAME_RE"]

ZONE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
Anchor = Literal["bottom_center", "center", "top_center", "bottom_left", "bottom_right"]


class ZoneConfig(BaseModel):
    """One zone of a camera: a simple polygon in source-frame pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Zone name, unique per camera: letters, digits, '_', '-', '.'.")
    points_px: list[tuple[float, float]] = Field(
        min_length=3, max_length=256, description="Polygon corners (x, y) in source-frame pixels, in order."
    )
    anchor: Anchor = Field("bottom_center", description="Which point of a box must be inside the polygon.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not ZONE_NAME_RE.match(v):
            raise ValueError(f"zone name must match {ZONE_NAME_RE.pattern}, got {v!r}")
        return v

    @field_validator("points_px")
    @classmethod
    def _check_polygon(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        pts = np.asarray(v, np.float64)
        if not np.isfinite(pts).all():
            raise ValueError("points_px must be finite numbers")
        if (pts < 0).any() or (pts > 100_000).any():
            raise ValueError(f"points_px must lie in 0..100000 px, got {v}")
        if len({tuple(p) for p in v}) != len(v):
            raise ValueError(f"points_px has repeated points: {v}")
        crossing = _self_intersection(pts)
        if crossing:
            raise ValueError(f"points_px edges {crossing[0]} and {crossing[1]} cross; the polygon must be simple")
        if abs(polygon_area(pts)) < 1.0:
            raise ValueError(f"points_px is degenerate (area < 1 px²; collinear points?): {v}")
        return [(float(p[0]), float(p[1])) for p in v]


def polygon_area(pts: np.ndarray) -> float:
    """Signed area (shoelace)."""
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _segments_cross(p1, p2, p3, p4) -> bool:
    def orient(a, b, c):
        v = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        return 0 if abs(v) < 1e-9 else (1 if v > 0 else -1)

    def on_seg(a, b, c):
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    o1, o2, o3, o4 = orient(p1, p2, p3), orient(p1, p2, p4), orient(p3, p4, p1), orient(p3, p4, p2)
    if o1 != o2 and o3 != o4:
        return True
    return (
        (o1 == 0 and on_seg(p1, p2, p3))
        or (o2 == 0 and on_seg(p1, p2, p4))
        or (o3 == 0 and on_seg(p3, p4, p1))
        or (o4 == 0 and on_seg(p3, p4, p2))
    )


def _self_intersection(pts: np.ndarray) -> tuple[int, int] | None:
    n = len(pts)
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a corner
            if _segments_cross(pts[i], pts[(i + 1) % n], pts[j], pts[(j + 1) % n]):
                return i, j
    return None


def anchor_points(xyxy: np.ndarray, anchor: Anchor = "bottom_center") -> np.ndarray:
    """(n, 2) anchor point of each xyxy box."""
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    x = {"bottom_left": b[:, 0], "bottom_right": b[:, 2]}.get(anchor, cx)
    y = {"center": cy, "top_center": b[:, 1]}.get(anchor, b[:, 3])
    return np.stack([x, y], axis=1)


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Bool (n,): which points lie inside or on the edge of `polygon` (m, 2); even-odd rule."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    poly = np.asarray(polygon, np.float64).reshape(-1, 2)
    if len(p) == 0:
        return np.zeros(0, bool)
    x, y = p[:, 0:1], p[:, 1:2]
    x1, y1 = poly[:, 0][None, :], poly[:, 1][None, :]
    x2, y2 = np.roll(poly[:, 0], -1)[None, :], np.roll(poly[:, 1], -1)[None, :]
    # on an edge: collinear and within the segment's bounding box
    cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
    within = (
        (np.minimum(x1, x2) - 1e-9 <= x)
        & (x <= np.maximum(x1, x2) + 1e-9)
        & (np.minimum(y1, y2) - 1e-9 <= y)
        & (y <= np.maximum(y1, y2) + 1e-9)
    )
    on_edge = (np.abs(cross) <= 1e-9 * np.maximum(1.0, np.hypot(x2 - x1, y2 - y1))) & within
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    crossings = (straddles & (x < x_at)).sum(axis=1)
    return (crossings % 2 == 1) | on_edge.any(axis=1)


class Zone:
    """A validated zone, ready to test detections."""

    def __init__(self, config: ZoneConfig):
        self.config = config
        self.name = config.name
        self.polygon = np.asarray(config.points_px, np.float64)

    def contains(self, detections: Detections) -> np.ndarray:
        """Bool (n,): which detections have their anchor inside."""
        return points_in_polygon(anchor_points(detections.xyxy, self.config.anchor), self.polygon)

    def contains_boxes(self, xyxy: np.ndarray) -> np.ndarray:
        return points_in_polygon(anchor_points(xyxy, self.config.anchor), self.polygon)

    def __repr__(self) -> str:
        return f"Zone({self.name!r}, {len(self.polygon)} points)"


def check_zone_names(zones: Iterable[ZoneConfig], where: str = "zones") -> None:
    """Raise ValueError naming the duplicate when two zones share a name."""
    seen: set[str] = set()
    for z in zones:
        if z.name in seen:
            raise ValueError(f"{where}: zone name {z.name!r} is used twice")
        seen.add(z.name)
