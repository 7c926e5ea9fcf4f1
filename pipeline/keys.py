"""Redis key layout shared by every stage (one place, so stages on different nodes agree)."""

from __future__ import annotations

PREFIX = "lookout"
# The bus's reserved camera of POST /api/detect images: no real camera id starts with "_" (config checks).
UPLOAD_CAMERA = "_upload"


def frames(camera_id: str) -> str:
    """Stream of JPEG frames of one camera (bounded)."""
    return f"{PREFIX}:frames:{camera_id}"


def upload_seq() -> str:
    """Counter numbering the images of POST /api/detect on the bus."""
    return f"{PREFIX}:upload:seq"


def detections(camera_id: str) -> str:
    """Stream of detection results of one camera (bounded)."""
    return f"{PREFIX}:detections:{camera_id}"


def detections_latest(camera_id: str) -> str:
    """JSON of the newest detection result of one camera."""
    return f"{PREFIX}:detections:{camera_id}:latest"


def camera_status(camera_id: str) -> str:
    """JSON of the ingest status of one camera."""
    return f"{PREFIX}:camera:{camera_id}:status"


def cameras() -> str:
    """Hash camera_id -> JSON of its public config (name, source kind)."""
    return f"{PREFIX}:cameras"


def hls_playlist(camera_id: str) -> str:
    """The current HLS media playlist text of one camera."""
    return f"{PREFIX}:hls:{camera_id}:playlist"


def hls_segment(camera_id: str, name: str) -> str:
    """Bytes of one HLS segment (expires on its own)."""
    return f"{PREFIX}:hls:{camera_id}:seg:{name}"


def detections_tracked(camera_id: str) -> str:
    """JSON of the newest tracked detections of one camera (with tracker_id; the events stage)."""
    return f"{PREFIX}:detections:{camera_id}:tracked"


def motion(camera_id: str, hour: int) -> str:
    """Hash second -> max motion activity of one camera in one hour (`hour` = epoch seconds // 3600)."""
    return f"{PREFIX}:motion:{camera_id}:{hour}"


def record_sweep_lock(scope: str = "cluster") -> str:
    """Token of the one recordings retention sweep running in a scope: the cluster (a shared store) or one
    node (its local disk) (SET NX PX)."""
    return f"{PREFIX}:record:sweep_lock:{scope}"


def events_stream() -> str:
    """Stream of event updates (start, update, end) of every camera."""
    return f"{PREFIX}:events"


def event(event_id: str) -> str:
    """JSON of one event."""
    return f"{PREFIX}:event:{event_id}"


def event_snapshot(event_id: str) -> str:
    """JPEG snapshot of one event."""
    return f"{PREFIX}:event:{event_id}:snapshot"


def events_index(camera_id: str | None = None, rule_id: str | None = None) -> str:
    """Sorted set of event ids by start time: one camera's, one rule's, or all."""
    if camera_id is not None:
        return f"{PREFIX}:events:cam:{camera_id}"
    if rule_id is not None:
        return f"{PREFIX}:events:rule:{rule_id}"
    return f"{PREFIX}:events:all"


def delivered(sink_name: str, delivery: str) -> str:
    """A sink's delivery mark of one event update (pending, then done): at most once per sink."""
    return f"{PREFIX}:delivered:{sink_name}:{delivery}"


def metric(name: str) -> str:
    """Hash labels -> value of one metric, summed over the processes that report it."""
    return f"{PREFIX}:metrics:{name}"


def ingest_lease(camera_id: str) -> str:
    """Which node's replica reads one camera (a lease with a TTL)."""
    return f"{PREFIX}:lease:ingest:{camera_id}"


def hls_index(camera_id: str) -> str:
    """Sorted set of one camera's live HLS segments by capture time (clips are cut from it)."""
    return f"{PREFIX}:hls:{camera_id}:index"


def hls_viewers(camera_id: str) -> str:
    """Set while someone watches a camera's live HLS (expires when nobody asks for a while)."""
    return f"{PREFIX}:hls:{camera_id}:viewers"


def hls_info(camera_id: str) -> str:
    """JSON of a camera's live stream: video path (copy or transcode) and why, sizes, fps."""
    return f"{PREFIX}:hls:{camera_id}:info"


def track_counter(camera_id: str) -> str:
    """Counter of a camera's track ids (ids stay unique when the events stage restarts)."""
    return f"{PREFIX}:tracks:{camera_id}:next_id"


def events_cursor(camera_id: str) -> str:
    """The last detections entry of a camera the events stage handled (it resumes after it)."""
    return f"{detections(camera_id)}:events_cursor"
