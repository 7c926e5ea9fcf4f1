"""Rules over tracked detections, and the engine that turns them into events.

Three kinds (a pydantic union discriminated on `kind`):

- `count_above`: more than `count` objects of `label` in `zone` for at least `for_s` seconds.
  One event per camera while it holds; it ends once the count has stayed at or below `count`
  for `end_after_s`.
- `enters`: a tracked `label` enters `zone` (seen outside first, unless `from_outside_only` is
  off). One event per track; it ends when the track has been out of the zone (or out of view)
  for `end_after_s`.
- `track_vote`: `label` was seen on a track in at least `min_frames` of its frames (and at least
  `min_fraction` of them) — MaskCam's "no mask" vote, generalised. One event per track; it ends
  when the track has been out of view for `end_after_s`. Use a class-agnostic tracker
  (`class_aware: false`) when the label changes along a track (mask / no_mask).

`RuleEngine.update()` is called once per detected frame of a camera, in capture order, and
returns `EventUpdate`s: `start` (with `start_s` = when the condition began), `update` (the
tracks involved changed) and `end`. Rules and zones can be replaced on a running engine; state
of rules that did not change is kept.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterable, Literal, Mapping, Sequence, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from pipeline.types import Detections
from pipeline.zones import Zone, ZoneConfig, check_zone_names

log = logging.getLogger(__name__)

__all__ = [
    "CountAboveRule",
    "EntersRule",
    "TrackVoteRule",
    "Rule",
    "RulesConfig",
    "parse_rules",
    "EventUpdate",
    "RuleEngine",
]

RULE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _RuleBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Unique rule id: lowercase letters, digits, '-' or '_'.")
    label: str = Field(min_length=1, max_length=100, description="Class label the rule is about, e.g. 'person'.")
    zone: str | None = Field(None, description="Zone name on the camera; default: the whole frame.")
    cameras: list[str] | None = Field(None, description="Cameras the rule applies to; default: all.")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="Detections below this confidence are ignored.")
    cooldown_s: float = Field(
        0.0,
        ge=0.0,
        le=86400.0,
        description="No new event of this rule on a camera until this long after its previous one there started or ended.",
    )
    end_after_s: float = Field(
        1.0, ge=0.0, le=3600.0, description="How long the condition must be gone before the event ends."
    )
    enabled: bool = Field(True, description="A disabled rule keeps no state and makes no events.")

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not RULE_ID_RE.match(v):
            raise ValueError(f"rule id must match {RULE_ID_RE.pattern}, got {v!r}")
        return v

    def applies_to(self, camera_id: str) -> bool:
        return self.enabled and (self.cameras is None or camera_id in self.cameras)


class CountAboveRule(_RuleBase):
    """More than `count` objects of `label` in `zone` for at least `for_s` seconds."""

    kind: Literal["count_above"] = "count_above"
    count: int = Field(ge=0, le=10000, description="The event needs strictly more objects than this.")
    for_s: float = Field(0.0, ge=0.0, le=86400.0, description="How long the count must stay above `count`.")


class EntersRule(_RuleBase):
    """A tracked `label` enters `zone`."""

    kind: Literal["enters"] = "enters"
    zone: str = Field(description="Zone name on the camera.")
    from_outside_only: bool = Field(
        True, description="Only tracks first seen outside the zone count; off: appearing inside counts too."
    )


class TrackVoteRule(_RuleBase):
    """`label` seen on a track in at least `min_frames` (and `min_fraction`) of its frames."""

    kind: Literal["track_vote"] = "track_vote"
    min_frames: int = Field(ge=1, le=100000, description="Frames of a track that must show `label`.")
    min_fraction: float = Field(0.0, ge=0.0, le=1.0, description="Least share of the track's frames showing `label`.")


Rule = Annotated[Union[CountAboveRule, EntersRule, TrackVoteRule], Field(discriminator="kind")]
_RULES = TypeAdapter(list[Rule])


class RulesConfig(BaseModel):
    """The rules of an application (runtime-replaceable through `user_config`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field(default_factory=list, description="The rules; ids must be unique.")

    @model_validator(mode="after")
    def _unique_ids(self) -> "RulesConfig":
        seen: set[str] = set()
        for r in self.rules:
            if r.id in seen:
                raise ValueError(f"rules: id {r.id!r} is used twice")
            seen.add(r.id)
        return self


def parse_rules(data: Sequence[Mapping[str, Any]]) -> list[Rule]:
    """Validate a list of rule dicts (e.g. from user_config); errors name the index and field."""
    return list(RulesConfig(rules=_RULES.validate_python(list(data))).rules)


# --------------------------------------------------------------------------- events


@dataclass
class EventUpdate:
    """One change of an event: `start`, `update` (tracks involved changed) or `end`."""

    kind: Literal["start", "update", "end"]
    event_id: str
    camera_id: str
    rule_id: str
    rule_kind: str
    label: str
    zone: str | None
    timestamp_s: float  # capture time of the frame that made this update
    start_s: float  # when the condition began
    end_s: float | None  # set on `end`: the last time the condition held
    track_ids: list[int]  # every track involved so far
    count: int = 0  # objects counted in this frame (count_above), else tracks in the event now
    boxes: dict[int, list[float]] = field(default_factory=dict)  # track id -> xyxy in this frame

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "event_id": self.event_id,
            "camera_id": self.camera_id,
            "rule_id": self.rule_id,
            "rule_kind": self.rule_kind,
            "label": self.label,
            "zone": self.zone,
            "timestamp_s": self.timestamp_s,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "track_ids": list(self.track_ids),
            "count": self.count,
            "boxes": {str(k): v for k, v in self.boxes.items()},
        }


@dataclass
class _Active:
    event_id: str
    start_s: float
    track_ids: set[int]
    last_true_s: float  # last time the condition held
    reported: frozenset[int] = frozenset()


@dataclass
class _TrackState:
    first_s: float
    last_s: float
    frames: int = 0
    votes: int = 0
    inside: bool = False
    seen_outside: bool = False
    last_inside_s: float | None = None
    fired: bool = False


@dataclass
class _RuleState:
    """State of one rule on one camera."""

    above_since: float | None = None
    active: dict[Any, _Active] = field(default_factory=dict)  # key: None (count) or track id
    tracks: dict[int, _TrackState] = field(default_factory=dict)
    last_change_s: float | None = None  # last start or end (cooldown)


class RuleEngine:
    """Evaluates rules per camera, frame by frame (not thread-safe: one caller).

    `cameras_zones`: camera id -> its zones. `labels`: class names by class id, used when the
    detections carry no `data["label"]` column.
    """

    def __init__(
        self,
        cameras_zones: Mapping[str, Iterable[ZoneConfig]],
        rules: Iterable[Rule],
        labels: Sequence[str] | None = None,
    ):
        self.labels = list(labels) if labels else None
        self._zones: dict[str, dict[str, Zone]] = {}
        self._rules: dict[str, Rule] = {}
        self._state: dict[tuple[str, str], _RuleState] = {}
        self._last_ts: dict[str, float] = {}
        self.set_zones(cameras_zones)
        self.set_rules(rules)

    # ----------------------------------------------------------------- configuration

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    def set_zones(self, cameras_zones: Mapping[str, Iterable[ZoneConfig]]) -> list[EventUpdate]:
        """Replace every camera's zones; rules whose zone changed on a camera restart there
        (their open events end). Rules must still find their zones (else ValueError)."""
        new: dict[str, dict[str, Zone]] = {}
        for cam, zones in cameras_zones.items():
            zones = list(zones)
            check_zone_names(zones, f"zones of camera {cam!r}")
            new[cam] = {z.name: Zone(z) for z in zones}
        if self._rules:
            self._check(self._rules.values(), new)
        ended: list[EventUpdate] = []
        for (cam, rid), _ in list(self._state.items()):
            rule = self._rules.get(rid)
            zname = rule.zone if rule else None
            if zname is None:
                continue
            old_z = self._zones.get(cam, {}).get(zname)
            new_z = new.get(cam, {}).get(zname)
            if old_z is None or new_z is None or old_z.config != new_z.config:
                ended += self._drop_state(cam, rid, "its zone changed")
        self._zones = new
        return ended

    def set_rules(self, rules: Iterable[Rule]) -> list[EventUpdate]:
        """Replace the rules. Unchanged rules keep their state and open events; removed or
        changed ones end their open events (returned) and start afresh."""
        rules = list(rules)
        RulesConfig(rules=rules)  # unique ids
        self._check(rules, self._zones)
        new = {r.id: r for r in rules}
        ended: list[EventUpdate] = []
        for cam, rid in list(self._state):
            if new.get(rid) != self._rules.get(rid) or not new[rid].applies_to(cam):
                ended += self._drop_state(cam, rid, "the rule changed or was removed")
        self._rules = new
        return ended

    def close_camera(self, camera_id: str, timestamp_s: float | None = None) -> list[EventUpdate]:
        """End every open event of a camera (it stopped); its rule state is forgotten."""
        out: list[EventUpdate] = []
        for cam, rid in list(self._state):
            if cam == camera_id:
                out += self._drop_state(cam, rid, "the camera closed", timestamp_s)
        self._last_ts.pop(camera_id, None)
        return out

    def _check(self, rules: Iterable[Rule], zones: Mapping[str, Mapping[str, Zone]]) -> None:
        for r in rules:
            if r.zone is None:
                continue
            cams = r.cameras if r.cameras is not None else [c for c, z in zones.items() if r.zone in z]
            if not cams:
                raise ValueError(f"rule {r.id!r}: no camera has zone {r.zone!r}")
            for cam in cams:
                if r.zone not in zones.get(cam, {}):
                    raise ValueError(f"rule {r.id!r}: camera {cam!r} has no zone {r.zone!r}")

    def _drop_state(self, cam: str, rid: str, why: str, ts: float | None = None) -> list[EventUpdate]:
        st = self._state.pop((cam, rid), None)
        rule = self._rules.get(rid)
        if st is None or rule is None or not st.active:
            return []
        log.info("[%s] rule %s: ending %d open event(s): %s", cam, rid, len(st.active), why)
        t = ts if ts is not None else self._last_ts.get(cam, 0.0)
        return [self._end(cam, rule, a, t) for a in st.active.values()]

    # ----------------------------------------------------------------- per frame

    def update(self, camera_id: str, detections: Detections, timestamp_s: float) -> list[EventUpdate]:
        """Feed one frame's tracked detections (`tracker_id` set; rules about counts also work
        without) and get the event changes it causes."""
        last = self._last_ts.get(camera_id)
        if last is not None and timestamp_s < last:
            log.warning("[%s] frame at %.3f older than the last one (%.3f); ignored", camera_id, timestamp_s, last)
            return []
        self._last_ts[camera_id] = timestamp_s
        labels = self._labels_of(detections)
        out: list[EventUpdate] = []
        for rule in self._rules.values():
            if not rule.applies_to(camera_id):
                continue
            zone = self._zones.get(camera_id, {}).get(rule.zone) if rule.zone else None
            if rule.zone and zone is None:
                continue  # cameras=None and this camera lacks the zone
            st = self._state.setdefault((camera_id, rule.id), _RuleState())
            sel = (labels == rule.label) & (detections.confidence >= rule.min_confidence)
            inside = zone.contains(detections) if zone is not None else np.ones(len(detections), bool)
            if isinstance(rule, CountAboveRule):
                out += self._count_above(camera_id, rule, st, detections, sel & inside, timestamp_s)
            elif isinstance(rule, EntersRule):
                out += self._enters(camera_id, rule, st, detections, sel, inside, timestamp_s)
            else:
                out += self._track_vote(camera_id, rule, st, detections, sel, inside, timestamp_s)
        return out

    def _labels_of(self, d: Detections) -> np.ndarray:
        if "label" in d.data:
            return np.asarray(d.data["label"], dtype=object)
        if self.labels:
            n = len(self.labels)
            return np.array([self.labels[c] if 0 <= c < n else str(c) for c in d.class_id.tolist()], dtype=object)
        return np.array([str(c) for c in d.class_id.tolist()], dtype=object)

    def _cooling(self, rule: Rule, st: _RuleState, t: float) -> bool:
        return st.last_change_s is not None and t - st.last_change_s < rule.cooldown_s

    def _new_id(self, cam: str, rule: Rule, start_s: float, track: int | None) -> str:
        base = f"{cam}.{rule.id}.{int(round(start_s * 1000))}"
        return base if track is None else f"{base}.{track}"

    def _make(self, kind, cam, rule, a: _Active, t, count, boxes, end_s=None) -> EventUpdate:
        return EventUpdate(
            kind,
            a.event_id,
            cam,
            rule.id,
            rule.kind,
            rule.label,
            rule.zone,
            t,
            a.start_s,
            end_s,
            sorted(a.track_ids),
            count,
            boxes,
        )

    def _end(self, cam: str, rule: Rule, a: _Active, t: float) -> EventUpdate:
        log.debug("[%s] rule %s: event %s ended", cam, rule.id, a.event_id)
        return self._make("end", cam, rule, a, t, 0, {}, end_s=a.last_true_s)

    @staticmethod
    def _boxes(d: Detections, mask: np.ndarray) -> dict[int, list[float]]:
        if d.tracker_id is None:
            return {}
        return {
            int(d.tracker_id[i]): [round(float(v), 1) for v in d.xyxy[i]]
            for i in np.flatnonzero(mask)
            if d.tracker_id[i] >= 0
        }

    def _count_above(self, cam, rule: CountAboveRule, st: _RuleState, d: Detections, mask, t) -> list[EventUpdate]:
        ids = {int(i) for i in d.tracker_id[mask] if i >= 0} if d.tracker_id is not None else set()
        count = int(mask.sum())
        a = st.active.get(None)
        if count > rule.count:
            if st.above_since is None:
                st.above_since = t
            if a is not None:
                a.last_true_s = t
                a.track_ids |= ids
                if frozenset(a.track_ids) != a.reported:
                    a.reported = frozenset(a.track_ids)
                    return [self._make("update", cam, rule, a, t, count, self._boxes(d, mask))]
                return []
            if t - st.above_since >= rule.for_s and not self._cooling(rule, st, t):
                a = _Active(self._new_id(cam, rule, st.above_since, None), st.above_since, set(ids), t, frozenset(ids))
                st.active[None] = a
                st.last_change_s = t
                log.debug("[%s] rule %s: event %s started (%d %s)", cam, rule.id, a.event_id, count, rule.label)
                return [self._make("start", cam, rule, a, t, count, self._boxes(d, mask))]
            return []
        st.above_since = None
        if a is not None and t - a.last_true_s >= rule.end_after_s:
            del st.active[None]
            st.last_change_s = t
            return [self._end(cam, rule, a, t)]
        return []

    def _tracks_of(self, d: Detections, cam: str, rule: Rule) -> np.ndarray:
        if d.tracker_id is None:
            log.debug("[%s] rule %s needs tracker ids; detections have none", cam, rule.id)
            return np.full(len(d), -1, np.int64)
        return d.tracker_id

    def _enters(self, cam, rule: EntersRule, st: _RuleState, d: Detections, sel, inside, t) -> list[EventUpdate]:
        out: list[EventUpdate] = []
        tids = self._tracks_of(d, cam, rule)
        for i in np.flatnonzero(sel & (tids >= 0)):
            tid = int(tids[i])
            ts = st.tracks.get(tid)
            if ts is None:
                ts = st.tracks[tid] = _TrackState(first_s=t, last_s=t)
            ts.last_s, ts.frames = t, ts.frames + 1
            if inside[i]:
                ts.last_inside_s = t
                a = st.active.get(tid)
                if a is not None:
                    a.last_true_s = t
                elif (
                    not ts.inside
                    and (ts.seen_outside or not rule.from_outside_only)
                    and not ts.fired
                    and not self._cooling(rule, st, t)
                ):
                    a = st.active[tid] = _Active(self._new_id(cam, rule, t, tid), t, {tid}, t, frozenset({tid}))
                    ts.fired = True
                    st.last_change_s = t
                    log.debug("[%s] rule %s: track %d entered %s (event %s)", cam, rule.id, tid, rule.zone, a.event_id)
                    out.append(self._make("start", cam, rule, a, t, 1, self._boxes(d, tids == tid)))
                ts.inside = True
            else:
                ts.inside, ts.seen_outside = False, True
                ts.fired = False if tid not in st.active else ts.fired  # may enter again later
        out += self._end_stale(cam, rule, st, t)
        return out

    def _track_vote(self, cam, rule: TrackVoteRule, st: _RuleState, d: Detections, sel, inside, t) -> list[EventUpdate]:
        out: list[EventUpdate] = []
        tids = self._tracks_of(d, cam, rule)
        conf_ok = d.confidence >= rule.min_confidence
        for i in np.flatnonzero(inside & (tids >= 0) & conf_ok):
            tid = int(tids[i])
            ts = st.tracks.get(tid)
            if ts is None:
                ts = st.tracks[tid] = _TrackState(first_s=t, last_s=t)
            ts.last_s, ts.frames, ts.votes = t, ts.frames + 1, ts.votes + bool(sel[i])
            a = st.active.get(tid)
            if a is not None:
                a.last_true_s = t
            elif (
                not ts.fired
                and ts.votes >= rule.min_frames
                and ts.votes >= rule.min_fraction * ts.frames
                and not self._cooling(rule, st, t)
            ):
                a = st.active[tid] = _Active(
                    self._new_id(cam, rule, ts.first_s, tid), ts.first_s, {tid}, t, frozenset({tid})
                )
                ts.fired = True
                st.last_change_s = t
                log.debug(
                    "[%s] rule %s: track %d showed %s in %d/%d frames (event %s)",
                    cam,
                    rule.id,
                    tid,
                    rule.label,
                    ts.votes,
                    ts.frames,
                    a.event_id,
                )
                out.append(self._make("start", cam, rule, a, t, ts.votes, self._boxes(d, tids == tid)))
        out += self._end_stale(cam, rule, st, t)
        return out

    def _end_stale(self, cam: str, rule: Rule, st: _RuleState, t: float) -> list[EventUpdate]:
        out = []
        for tid, a in list(st.active.items()):
            if t - a.last_true_s >= rule.end_after_s and a.last_true_s < t:
                del st.active[tid]
                st.last_change_s = t
                out.append(self._end(cam, rule, a, t))
        keep_s = max(rule.end_after_s, 1.0) + 60.0
        for tid, ts in list(st.tracks.items()):
            if t - ts.last_s > keep_s and tid not in st.active:
                del st.tracks[tid]
        return out
