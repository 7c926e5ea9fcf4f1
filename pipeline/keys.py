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
