"""Hardware-decode presets for a camera's ffmpeg: the options placed before `-i` for `cam.hwaccel`.

Pure functions: hls/copy_args.camera_ffmpeg_args inserts `decode_args(cam, codec)` before `-i`.
Only the decode changes; a stream-copied video (`-c:v copy`) never passes through the decoder, so the
hardware decodes the frames for the detector (and for a transcode), which always come back to system
memory: the scale filter and libx264 downstream are software.

- cuda: NVDEC through `-hwaccel cuda`; without `-hwaccel_output_format cuda` ffmpeg downloads each
  frame (NV12), and a codec NVDEC lacks falls back to software decoding.
- vaapi: Intel/AMD through the render node; `-hwaccel_output_format yuv420p` makes the download to
  system memory explicit (Frigate's long-standing VAAPI preset does the same).
- jetson: NVIDIA's L4T ffmpeg (`apt install ffmpeg` on Jetson Linux) has per-codec V4L2 decoders
  (`h264_nvv4l2dec`, ...), picked by `-c:v` before `-i`; Frigate's presets use the community nvmpi
  build's `h264_nvmpi`/`hevc_nvmpi` the same way. A codec without a decoder there decodes in software.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

from pipeline.config import CameraConfig, PipelineArgs

VAAPI_DEVICE = "/dev/dri/renderD128"
CUDA_DEVICE = "/dev/nvidiactl"
JETSON_RELEASE_FILE = "/etc/nv_tegra_release"  # present on every L4T (Jetson Linux) system

# ffprobe codec_name -> the L4T ffmpeg decoder for it
JETSON_DECODERS = {
    "h264": "h264_nvv4l2dec",
    "hevc": "hevc_nvv4l2dec",
    "mpeg2video": "mpeg2_nvv4l2dec",
    "mpeg4": "mpeg4_nvv4l2dec",
    "vp8": "vp8_nvv4l2dec",
    "vp9": "vp9_nvv4l2dec",
}

# ffmpeg stderr lines that say the hardware decoder could not start (device, driver, codec)
_FAILURE_RE = re.compile(
    r"Cannot load lib\S+|Could not dynamically load CUDA|No VA display found[^.]*|Failed to initialise VAAPI[^.]*"
    r"|Device creation failed: -?\d+|No device available for decoder[^.]*|Unknown decoder '[^']+'"
    r"|Device setup failed for decoder[^\n]*",
)
_LOG_PREFIX_RE = re.compile(r"^\[[\w.:-]+ @ (0x)?[0-9a-fA-F]+\]\s*")


def decode_args(cam: CameraConfig, codec: str | None) -> list[str]:
    """The ffmpeg input options (before `-i`) that decode `cam`'s video of `codec` (ffprobe's codec_name,
    None when unknown) on the hardware `cam.hwaccel` names; [] decodes in software."""
    if not isinstance(cam, CameraConfig):
        raise TypeError(f"cam must be a CameraConfig, got {type(cam).__name__} {cam!r}")
    if codec is not None and not isinstance(codec, str):
        raise TypeError(f"codec must be a str or None, got {type(codec).__name__} {codec!r}")
    if cam.hwaccel == "none":
        return []
    if cam.hwaccel == "cuda":
        return ["-hwaccel", "cuda"]
    if cam.hwaccel == "vaapi":
        return ["-hwaccel", "vaapi", "-hwaccel_device", VAAPI_DEVICE, "-hwaccel_output_format", "yuv420p"]
    if cam.hwaccel == "jetson":
        decoder = JETSON_DECODERS.get((codec or "").lower())
        return ["-c:v", decoder] if decoder else []
    raise ValueError(f"camera {cam.id}: hwaccel {cam.hwaccel!r} is not one of none, cuda, vaapi, jetson")


def hwaccel_failure(cam: CameraConfig, stderr_lines: Iterable[str]) -> str | None:
    """Why `cam`'s hardware decoder did not start, from its ffmpeg's stderr: one line naming the field
    (cameras[id].hwaccel), or None when the lines show no such failure (or the camera decodes in software).
    ffmpeg's last lines after such a failure are its I/O statistics, so a plain stderr tail loses the why."""
    if cam.hwaccel == "none":
        return None
    found: list[str] = []
    for line in stderr_lines:
        m = _FAILURE_RE.search(_LOG_PREFIX_RE.sub("", line.strip()))
        if m and m.group(0) not in found:
            found.append(m.group(0).rstrip(". "))
    if not found:
        return None
    return (
        f"hwaccel {cam.hwaccel} failed ({'; '.join(found[:3])}); "
        f"set cameras[{cam.id}].hwaccel: none to decode in software"
    )


def hwaccel_problems(cfg: PipelineArgs, exists: Callable[[str], bool] = os.path.exists) -> list[str]:
    """Cameras (enabled, running on this node) whose hwaccel cannot work here: one
    `cameras[id].hwaccel: ...` line each, for `lookout check` and build_app to refuse alike."""
    need = {
        "vaapi": (VAAPI_DEVICE, "no VAAPI render node"),
        "cuda": (CUDA_DEVICE, "no NVIDIA driver"),
        "jetson": (JETSON_RELEASE_FILE, "not a Jetson (L4T)"),
    }
    problems = []
    for cam in cfg.cameras:
        runs_here = cam.enabled and not cam.node_resource and not cam.node_labels  # pinned: its node's devices
        if not runs_here or cam.hwaccel not in need:
            continue
        path, what = need[cam.hwaccel]
        if not exists(path):
            problems.append(
                f"cameras[{cam.id}].hwaccel: {cam.hwaccel} needs {path}, which this machine lacks "
                f"({what}); use hwaccel: none"
            )
    return problems
