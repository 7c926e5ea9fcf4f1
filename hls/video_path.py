"""Which path each camera's video takes and why, as `lookout check` prints it.

`camera_path` (pipeline.config) decides worker or annotate from the config alone; for a worker camera
the source's codec then decides whether its video is stream-copied or transcoded once. `lookout check`
probes the codec with ffprobe (bounded by a timeout: an RTSP camera that does not answer is "codec
unknown until it connects", not an error).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hls.copy_args import SourceInfo, copyable, parse_probe, probe_args
from hls.hwaccel import decode_args
from pipeline.config import CameraConfig, HlsConfig, PipelineArgs, RecordConfig, camera_path
from pipeline.logutil import scrub_url

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
PROBES_AT_ONCE = 8


@dataclass(frozen=True)
class Probe:
    """What probing a camera's source found: its video stream, or why there is none to tell."""

    info: SourceInfo | None = None
    why_unknown: str | None = None


def video_plan(cam: CameraConfig, info: SourceInfo) -> tuple[str, str]:
    """("copy" | "transcode", why) for a worker camera whose source has `info`."""
    if copyable(info.codec):
        return "copy", f"{info.codec} is copied as it is (no re-encode)"
    fps = cam.fps or info.fps
    rate = f" at {fps:g} fps" if fps else " at the source's rate"
    return "transcode", f"{info.codec} cannot be copied: transcoded once{rate}"


def recording_plan(cam: CameraConfig, hls: HlsConfig, record: RecordConfig) -> tuple[bool, str]:
    """(recorded?, why) of a camera: only the camera worker's copied (or once transcoded) video is recorded."""
    rec = record.for_camera(cam)
    if not rec.enabled:
        where = "cameras[].record.enabled" if cam.record.enabled is not None else "record.enabled"
        return False, f"{where}: false"
    if not cam.enabled:
        return False, "the camera is disabled"
    if not hls.enabled:
        return False, "hls.enabled: false: no video is streamed"
    path, why = camera_path(cam, hls)
    if path != "worker":
        burned = (cam.boxes or hls.boxes) == "burned"
        return False, f"its video is re-encoded ({'boxes burned' if burned else why})"
    where = f"s3 bucket {rec.s3.bucket}" if rec.store == "s3" and rec.s3 else rec.dir
    return True, f"{rec.mode}, kept {rec.retain_days:g} days, in {where}"


def probe_camera(
    cam: CameraConfig, cfg: PipelineArgs, timeout_s: float = PROBE_TIMEOUT_S, ffprobe: str = "ffprobe"
) -> Probe:
    """ffprobe the camera's source (file or RTSP) within timeout_s; a source that cannot be probed from
    here says why instead."""
    kind = cam.kind
    if kind not in ("file", "rtsp"):
        return Probe(why_unknown=f"codec known once the {kind} device opens")
    if cam.node_resource or cam.node_labels:
        return Probe(why_unknown="codec probed on the camera's own node")
    if kind == "file":
        cam = cam.model_copy(update={"source": cfg.resolve_path(cam.source)})
    else:  # ffprobe's own socket timeout, a little inside ours
        cam = cam.model_copy(update={"open_timeout_s": timeout_s, "read_timeout_s": timeout_s})
    argv = probe_args(cam, ffprobe)
    try:
        out = subprocess.run(argv, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Probe(why_unknown=_unknown(kind, f"no answer within {timeout_s:g}s"))
    except OSError as exc:
        return Probe(why_unknown=f"codec unknown: cannot run ffprobe ({exc.strerror})")
    if out.returncode != 0:
        tail = out.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        return Probe(why_unknown=_unknown(kind, scrub_url(tail[0])))
    try:
        return Probe(info=parse_probe(out.stdout))
    except ValueError as exc:
        return Probe(why_unknown=f"codec unknown: {exc}")


def _unknown(kind: str, why: str) -> str:
    return f"codec unknown until it connects ({why})" if kind == "rtsp" else f"codec unknown ({why})"


def check_lines(cfg: PipelineArgs, probe: Callable[[CameraConfig, PipelineArgs], Probe] = probe_camera) -> list[str]:
    """One line per camera: its path and why, whether it is detected, and for a worker camera whose
    source could be probed its codec and whether its video is copied or transcoded."""
    worker = [c for c in cfg.cameras if c.enabled and cfg.hls.enabled and camera_path(c, cfg.hls)[0] == "worker"]
    # probed side by side: cameras that do not answer wait out their timeouts together
    with ThreadPoolExecutor(max_workers=max(1, min(PROBES_AT_ONCE, len(worker)))) as pool:
        probes = dict(zip([c.id for c in worker], pool.map(lambda c: probe(c, cfg), worker)))
    lines = []
    for cam in cfg.cameras:
        if not cam.enabled:
            lines.append(f"camera {cam.id}: disabled")
            continue
        if not cfg.hls.enabled:
            lines.append(
                f"camera {cam.id}: ingest only (hls.enabled: false): no video is streamed"
                + ("" if cam.detect else "; detection off")
            )
            continue
        path, why = camera_path(cam, cfg.hls)
        line = f"camera {cam.id}: {path} path ({why})"
        if path == "annotate" and not cam.detect:
            line += "; detection off"
        if path == "worker":
            found = probes[cam.id]
            if found.info is not None:
                _, reason = video_plan(cam, found.info)
                line += f"; video {found.info.width}x{found.info.height}: {reason}"
            else:
                line += f"; video: {found.why_unknown}"
            if cam.hwaccel != "none" and found.info is not None and not decode_args(cam, found.info.codec):
                line += f"; hwaccel {cam.hwaccel} has no decoder for {found.info.codec}: decoded in software"
            elif cam.hwaccel != "none":
                line += f"; decoded by {cam.hwaccel}"
        recorded, why = recording_plan(cam, cfg.hls, cfg.record)
        if recorded or cfg.record.enabled:  # silent where nobody asked for recording
            line += f"; recorded ({why})" if recorded else f"; not recorded: {why}"
        lines.append(line)
    return lines
