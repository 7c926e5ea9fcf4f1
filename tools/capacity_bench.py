"""`lookout bench capacity`: how many cameras one box keeps up with, per path, in one run.

Every camera is the same live RTSP stream on loopback (tools/rtsp_server.py, one shared H.264
encode of the clip, 768x576 at 10 fps, so the source costs the same at any N and is not counted),
each with live HLS and detection at 5 fps. For each mode the number of cameras N is doubled from
`--start` until a camera falls behind, then bisected between the last N that kept up and the
first that did not. A camera falls behind when, over the window:
- its HLS holds < 99 % of the source's frames (distinct source frames in the segments published
  during the window, over source fps x the time they span: dropped, repeated or late frames count);
- it got detections for < 95 % of 5 frames/s (by capture time);
- or its detection latency (capture -> detections available) p95 is > 1 s.

Modes:
- copy: the camera worker path (`boxes: browser`): one ffmpeg per camera copies the H.264 into HLS
  and decodes 5 fps scaled for the detector;
- record: copy with every camera recorded (`record.enabled`, local disk in a temp dir, removed after):
  what recording adds (issue 15: ≤ 5 % on cameras and CPU per camera);
- transcode: today's path with burned boxes (`boxes: burned`): ingest -> bus -> detector, annotate +
  libx264 encode;
- loop: the single-process loop a user would write (tools/user_loop.py), one process per camera.

Reported per mode: the largest N that keeps up, CPU cores per camera and total RSS at that N (sum
over the mode's processes: Ray workers, ffmpeg children, Redis; not the RTSP server nor this
process), RSS MB per added camera (slope over the N measured), latency p50 at the smallest N
(unsaturated), and for copy and record the video path alone: a last step at that N with `detect: false` (decode +
copy + bus: the camera replicas, their ffmpeg and Redis, not Ray's own processes) in cores per camera.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tools.procs import StageReading, free_port, read_stages

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIP = "data/demo/vtest-h264.mp4"
MODES = ("copy", "int8", "record", "transcode", "loop")
MIN_HLS_RATIO = 0.99
MIN_DETECT_RATIO = 0.95
MAX_LATENCY_P95_S = 1.0
DETECT_FPS = 5.0
POLL_S = 0.1
READY_TIMEOUT_S = 240.0
NOT_VIDEO = ("ServeReplica:lookout:detector", "ServeReplica:lookout:events", "ServeReplica:lookout:gateway")
CAMERA_WORKER = "ServeReplica:lookout:cameras-"  # deployments.app.camera_groups names them cameras-0, cameras-1...


# --- what the HLS stream holds -------------------------------------------------------------------

_VIDEO_STREAM_TYPES = {0x01, 0x02, 0x10, 0x1B, 0x24}  # MPEG-1/2, MPEG-4 part 2, H.264, H.265


def ts_video_frames(data: bytes) -> int:
    """Video frames in an MPEG-TS segment: PES packets started on the video PID (one per frame)."""
    pmt_pid = video_pid = None
    frames = 0
    for off in range(0, len(data) - 187, 188):
        if data[off] != 0x47:
            raise ValueError(f"MPEG-TS: lost sync at byte {off}")
        pusi = data[off + 1] & 0x40
        pid = ((data[off + 1] & 0x1F) << 8) | data[off + 2]
        afc = (data[off + 3] >> 4) & 0x3
        p = off + 4 + (1 + data[off + 4] if afc & 0x2 else 0)
        if not afc & 0x1 or p >= off + 188:
            continue
        if pid == 0 and pusi and pmt_pid is None:  # PAT: the first program's PMT
            p += 1 + data[p]
            pmt_pid = ((data[p + 10] & 0x1F) << 8) | data[p + 11]
        elif pid == pmt_pid and pusi and video_pid is None:
            p += 1 + data[p]
            section_end = p + 3 + (((data[p + 1] & 0x0F) << 8) | data[p + 2]) - 4
            q = p + 12 + (((data[p + 10] & 0x0F) << 8) | data[p + 11])
            while q + 5 <= section_end:
                stype, epid = data[q], ((data[q + 1] & 0x1F) << 8) | data[q + 2]
                if stype in _VIDEO_STREAM_TYPES:
                    video_pid = epid
                    break
                q += 5 + (((data[q + 3] & 0x0F) << 8) | data[q + 4])
        elif pid == video_pid and pusi:
            frames += 1
    return frames


def fmp4_frames(data: bytes) -> int:
    """Samples in an fMP4 media segment (every trun of every moof)."""
    from hls.fmp4 import find_boxes

    return sum(struct.unpack_from(">I", data, p + 4)[0] for p, _ in find_boxes(data, [b"moof", b"traf", b"trun"]))


def segment_frames(data: bytes, captures_ms: list[int] | None = None) -> int:
    """Source frames a segment holds: its frames, or, when its EXT-X-DATERANGE lists the capture time
    of each frame (an encoder that repeated images to fill a gap), the distinct capture times."""
    if captures_ms:
        return len(set(captures_ms))
    return ts_video_frames(data) if data[:1] == b"\x47" else fmp4_frames(data)


def replicas(a) -> int:
    """Detector replicas of the app modes (`--replicas`, one number; default 1)."""
    value = getattr(a, "replicas", None)
    try:
        n = int(value) if value not in (None, "") else 1
    except ValueError:
        raise SystemExit(f"--replicas: capacity takes one number, got {value!r}") from None
    if n < 1:
        raise SystemExit(f"--replicas must be >= 1, got {n}")
    return n


@dataclass
class Seen:
    """One segment as the watcher first saw it in the playlist."""

    name: str
    seen_at: float
    frames: int
    duration_s: float


class HlsWatcher:
    """Polls each camera's playlist every POLL_S and counts the frames of every new segment once."""

    def __init__(
        self, playlist: Callable[[str], str | None], segment: Callable[[str, str], bytes | None], cameras: list[str]
    ):
        self.playlist, self.segment, self.cameras = playlist, segment, cameras
        self.seen: dict[str, list[Seen]] = {c: [] for c in cameras}
        self.errors: dict[str, str] = {}
        self._names: dict[str, set[str]] = {c: set() for c in cameras}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hls-watcher")

    def start(self) -> "HlsWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def poll(self, camera: str) -> None:
        from hls.playlist import MediaPlaylist

        text = self.playlist(camera)
        if not text:
            return
        now = time.time()
        for e in MediaPlaylist.parse(text).entries:
            if e.name in self._names[camera]:
                continue
            data = self.segment(camera, e.name)
            if data is None:
                continue  # not there yet (or already gone): the next poll tries again
            self._names[camera].add(e.name)
            self.seen[camera].append(Seen(e.name, now, segment_frames(data, e.captures_ms), e.duration_s))

    def _run(self) -> None:
        while not self._stop.is_set():
            for cam in self.cameras:
                try:
                    self.poll(cam)
                except (OSError, ValueError) as exc:  # a half-written playlist or segment: noted, retried
                    self.errors[cam] = f"{type(exc).__name__}: {exc}"
            self._stop.wait(POLL_S)


def hls_ratio(seen: list[Seen], t0: float, t1: float, fps: float) -> float:
    """Source frames published per second of [t0, t1], over `fps`: the least-squares slope of the frames
    published so far against the time each segment was first seen (a fit over every segment, so that the
    jitter of one segment's publication or of the poll does not decide it). A stream that stopped
    publishing before t1 adds the point (t1, no new frames)."""
    segs = [s for s in seen if t0 <= s.seen_at <= t1]
    if len(segs) < 2:
        return 0.0
    pts, total = [], 0
    for s in segs:
        total += s.frames
        pts.append((s.seen_at, total))
    if t1 - segs[-1].seen_at > 2 * max(s.duration_s for s in segs) + 1:
        pts.append((t1, total))
    mx = statistics.fmean(x for x, _ in pts)
    my = statistics.fmean(y for _, y in pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den / fps if den > 0 else 0.0


# --- detections ----------------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def detection_figures(records: list[tuple[float, float]], t0: float, t1: float) -> dict:
    """(captured_at, available_at) of each detected frame -> detections/s and latency p50/p95 over the frames
    captured in [t0, t1]."""
    lat = [r[1] - r[0] for r in records if t0 <= r[0] <= t1]
    out = {"detect_fps": len(lat) / (t1 - t0), "latency_p50_s": pct(lat, 50), "latency_p95_s": pct(lat, 95)}
    # the app's records carry the batch's start: capture -> detector (bus, Ray call, batch wait) and the batch
    waits = [r[2] - r[0] for r in records if len(r) > 2 and r[2] is not None and t0 <= r[0] <= t1]
    if waits:
        out["to_detector_p50_s"] = pct(waits, 50)
        out["in_detector_p50_s"] = pct(
            [r[1] - r[2] for r in records if len(r) > 2 and r[2] is not None and t0 <= r[0] <= t1], 50
        )
    return out


def app_detections(client, camera: str, since_s: float) -> list[tuple[float, float, float | None]]:
    """(captured_at, detected_at, batch_started_at) of the camera's results in Redis captured since `since_s`."""
    from pipeline.bus import ResultStore

    store, out, last = ResultStore(client), [], f"{int(since_s * 1000)}-0"
    while chunk := store.read_after(camera, last, count=1000):
        last = chunk[-1][0]
        out += [
            (
                p["captured_at"],
                p["timings"].get("detected_at", p["captured_at"] + p["timings"].get("latency_s", 0)),
                p["timings"].get("batch_started_at"),
            )
            for _eid, p in chunk
        ]
    return out


def loop_detections(path: Path) -> list[tuple[float, float]]:
    """(captured_at, detected_at) of each line tools/user_loop.py wrote (a half-written last line is skipped)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        out.append((d["captured_at"], d["detected_at"]))
    return out


# --- verdicts and the search ---------------------------------------------------------------------


def behind(cam: dict, detect_fps: float | None = DETECT_FPS) -> list[str]:
    """Why one camera's figures fall behind (empty: it keeps up); detect_fps None: detection is off."""
    why = []
    if cam["hls_ratio"] < MIN_HLS_RATIO:
        why.append(f"HLS holds {cam['hls_ratio']:.1%} of the source's frames (< {MIN_HLS_RATIO:.0%})")
    if detect_fps is None:
        return why
    if not cam["detect_fps"] >= MIN_DETECT_RATIO * detect_fps:
        why.append(f"{cam['detect_fps']:.2f} detections/s (< {MIN_DETECT_RATIO:.0%} of {detect_fps:g})")
    if not cam["latency_p95_s"] <= MAX_LATENCY_P95_S:
        why.append(f"detection latency p95 {cam['latency_p95_s']:.2f} s (> {MAX_LATENCY_P95_S:g} s)")
    return why


def search(keeps_up: Callable[[int], bool], start: int, max_n: int) -> int:
    """The largest N in [1, max_n] for which keeps_up(N) holds, assuming it holds up to some N and not after:
    doubling from `start`, then bisecting between the last N that kept up and the first that did not
    (0 when not even 1 keeps up)."""
    if not 1 <= start <= max_n:
        raise ValueError(f"--start must be in 1..--max-cameras ({max_n}), got {start}")
    good, bad, n = 0, None, start
    while True:
        if keeps_up(n):
            good = n
            if n == max_n:
                return n
            n = min(2 * n, max_n)
        else:
            bad = n
            break
    while bad - good > 1:
        mid = (good + bad) // 2
        if keeps_up(mid):
            good = mid
        else:
            bad = mid
    return good


def totals(stages: dict[str, StageReading]) -> tuple[float, int]:
    return sum(s.cpu_s for s in stages.values()), sum(s.rss_bytes for s in stages.values())


def own_pids(exclude: set[int]) -> list[str]:
    """This run's processes (this process's descendants) but `exclude` (the RTSP server)."""
    from tools.soak import own_processes

    return [p for p in own_processes() if int(p) not in exclude]


def video_pids(pids: list[str], workers_only: bool = False) -> list[str]:
    """Of `pids`, the video path's: the app's camera replicas (not the detector, events or gateway), their
    ffmpeg children and Redis; not Ray's own processes (`workers_only`: the camera worker replicas alone)."""
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if workers_only:
            if CAMERA_WORKER in cmd:
                out.append(pid)
            continue
        camera_replica = "ServeReplica:lookout:" in cmd and not any(n in cmd for n in NOT_VIDEO)
        if camera_replica or cmd.split(" ", 1)[0].rsplit("/", 1)[-1] in ("ffmpeg", "redis-server"):
            out.append(pid)
    return out


def measure_window(
    cameras: list[str],
    watcher: HlsWatcher,
    detections: Callable[[str, float], list],
    exclude: set[int],
    warmup_s: float,
    window_s: float,
    fps: float,
    detect_fps: float | None = DETECT_FPS,
) -> dict:
    """After the warm-up: per camera figures and the processes' CPU over the window, RSS at its end
    (detect_fps None: detection is off and not judged)."""
    time.sleep(warmup_s)
    pids = own_pids(exclude)
    before, video_before = read_stages(pids), totals(read_stages(video_pids(pids)))[0]
    workers_before = totals(read_stages(video_pids(pids, workers_only=True)))[0]
    t0 = time.time()
    time.sleep(window_s)
    t1 = time.time()
    pids = own_pids(exclude)
    after, video_after = read_stages(pids), totals(read_stages(video_pids(pids)))[0]
    workers_after = totals(read_stages(video_pids(pids, workers_only=True)))[0]
    time.sleep(2.0)  # results and segments of the window's last frames
    cams = {}
    for c in cameras:
        fig = {"hls_ratio": hls_ratio(watcher.seen[c], t0, t1, fps), **detection_figures(detections(c, t0 - 5), t0, t1)}
        fig["behind"] = behind(fig, detect_fps)
        cams[c] = fig
    cpu = {k: (after[k].cpu_s - before.get(k, StageReading()).cpu_s) / (t1 - t0) for k in after}
    workers = (workers_after - workers_before) / (t1 - t0)
    if workers > 0:  # tools.procs files camera worker replicas under "ray" with Ray's own processes
        cpu["camera workers"], cpu["ray"] = workers, cpu.get("ray", 0.0) - workers
    return {
        "n": len(cameras),
        "cameras": cams,
        "keeps_up": not any(f["behind"] for f in cams.values()),
        "cores": sum(cpu.values()),
        "cores_by_stage": {k: round(v, 3) for k, v in cpu.items()},
        "video_cores": (video_after - video_before) / (t1 - t0),
        "rss_mb": totals(after)[1] / 2**20,
        "load": os.getloadavg()[0],
        "hls_errors": dict(watcher.errors),
    }


def wait_ready(
    cameras: list[str],
    watcher: HlsWatcher,
    detections: Callable[[str, float], list],
    since: float,
    alive: Callable[[], str | None] = lambda: None,
    need_detections: bool = True,
) -> None:
    """Until every camera has published 2 segments and a detection (else RuntimeError naming the laggards)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        waiting = [c for c in cameras if len(watcher.seen[c]) < 2 or (need_detections and not detections(c, since))]
        if not waiting:
            return
        dead = alive()
        if dead or time.monotonic() > deadline:
            raise RuntimeError(
                dead
                or f"cameras {', '.join(waiting)}: no HLS segments or detections after "
                f"{READY_TIMEOUT_S:.0f} s ({watcher.errors or 'no HLS errors'})"
            )
        time.sleep(1.0)


# --- the modes -----------------------------------------------------------------------------------


def calibration_frames(clip: Path, every_s: float = 5.0) -> str:
    """A temporary folder of JPEG frames of `clip`, one every `every_s`: what an `int8` run calibrates on
    (as a user would, on frames of their own camera)."""
    import cv2

    folder = tempfile.mkdtemp(prefix="lookout-capacity-calib-")
    cap = cv2.VideoCapture(str(clip))
    step = max(1, round((cap.get(cv2.CAP_PROP_FPS) or 10.0) * every_s))
    i = n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % step == 0:
            cv2.imwrite(os.path.join(folder, f"{n:04d}.jpg"), frame)
            n += 1
        i += 1
    cap.release()
    return folder


def int8_model(a: argparse.Namespace) -> dict:
    """The `model` settings of the int8 mode: precision int8, calibrated on `--calib-images` or on frames
    of the clip, quantized into a cache folder of its own."""
    return {
        "precision": "int8",
        "engine_cache_dir": tempfile.mkdtemp(prefix="lookout-capacity-int8-"),
        "calib_images": getattr(a, "calib_images", None) or calibration_frames(Path(a.clip or DEFAULT_CLIP)),
    }


def app_onnx(a: argparse.Namespace) -> str:
    """The app modes' model: `--onnx`, or with `--input-height` the same model at its width and that height.
    The user loop keeps `--onnx`."""
    height = getattr(a, "input_height", None)
    if not height:
        return a.onnx
    from pipeline.models.onnx_export import at_input_size, load_graph_info

    return str(at_input_size(a.onnx, (load_graph_info(a.onnx)["input_size"], height)))


def quantize_ahead(onnx_path: str, int8: dict) -> bool:
    """Quantize the int8 mode's model into its cache before the first step (the detector then finds it there)
    and say whether its check against FP32 passed: if not, the detector runs FP32 and the mode is not INT8."""
    from pipeline.config import ModelConfig
    from pipeline.models.backends import cpu_model_file
    from pipeline.models.resolve import ResolvedModel

    used = cpu_model_file(ModelConfig(onnx=onnx_path, **int8), ResolvedModel(onnx=Path(onnx_path)))
    if used == Path(onnx_path):
        print(
            f"note: INT8 of {onnx_path} failed its check against FP32 (see the error above): the int8 mode runs FP32",
            flush=True,
        )
        return False
    print(f"int8: {used}", flush=True)
    return True


class AppMode:
    """copy, int8, record or transcode: the app on a local Ray with N RTSP cameras (redeployed for each N)."""

    def __init__(self, a: argparse.Namespace, mode: str, url: str, redis_url: str, port: int, exclude: set[int]):
        import redis

        from hls.store import RedisHlsStore

        self.a, self.mode, self.url, self.redis_url, self.port, self.exclude = a, mode, url, redis_url, port, exclude
        self.client = redis.Redis.from_url(redis_url)
        self.store = RedisHlsStore(self.client, ttl_s=60)
        self.deployments: list[str] = []
        # record: the copy path with every camera recorded to local disk (what recording costs on top)
        self.record_dir = tempfile.mkdtemp(prefix="lookout-capacity-rec-") if mode == "record" else None
        # int8: the copy path with the detector's model quantized (model.precision int8) on frames of the clip
        self.int8 = int8_model(a) if mode == "int8" else {}
        self.onnx = app_onnx(a)
        if self.int8:
            self.int8_used = quantize_ahead(self.onnx, self.int8)

    def args(self, n: int, detect: bool = True) -> dict:
        boxes = "burned" if self.mode == "transcode" else "browser"
        record = {"record": {"enabled": True, "dir": self.record_dir}} if self.record_dir else {}
        return {
            **record,
            "redis_url": self.redis_url,
            "cameras": [
                {
                    "id": f"{self.mode}{i}",
                    "source": self.url,
                    "boxes": boxes,
                    "detect_fps": DETECT_FPS,
                    "detect": detect,
                }
                for i in range(n)
            ],
            "model": {
                "onnx": self.onnx,
                "backend": self.a.backend,
                **({"input_height_px": self.a.input_height} if getattr(self.a, "input_height", None) else {}),
                **({"intra_op_threads": self.a.threads} if getattr(self.a, "threads", 0) else {}),
                **self.int8,
            },
            # Ray CPUs shared out, so that several replicas fit the head's CPUs: threads say what they use.
            "detector": {
                "num_replicas": replicas(self.a),
                "num_cpus": round(1 / replicas(self.a), 2),
                **({"max_batch_size": self.a.max_batch} if getattr(self.a, "max_batch", 0) else {}),
            },
            "hls": {"boxes": boxes},
            "events": {"enabled": False},
            "gateway": {"public_url": f"http://127.0.0.1:{self.port}", "auth": {"mode": "none"}},
        }

    def measure(self, n: int, fps: float, detect: bool = True) -> dict:
        """Deploys N cameras (detect False: frames still go on the bus, none to the detector) and measures."""
        from ray import serve

        from deployments.app import build_app
        from hls.viewers import get_stream_info
        from pipeline.config import parse_args

        cams = [f"{self.mode}{i}" for i in range(n)]
        started = time.time()
        serve.run(build_app(parse_args(self.args(n, detect))), name="lookout", route_prefix="/")
        self.deployments = sorted(serve.status().applications["lookout"].deployments)
        watcher = HlsWatcher(self._playlist, self.store.get_segment, cams).start()
        detections = lambda c, since: app_detections(self.client, c, since)  # noqa: E731
        try:
            wait_ready(cams, watcher, detections, started, need_detections=detect)
            row = measure_window(
                cams,
                watcher,
                detections,
                self.exclude,
                self.a.warmup_s,
                self.a.window_s,
                fps,
                DETECT_FPS if detect else None,
            )
        finally:
            watcher.stop()
        for c in cams:  # what the running camera said of its video: copy or transcode (worker path)
            row["cameras"][c]["video"] = (get_stream_info(self.client, c) or {}).get("video")
        return row

    def _playlist(self, camera: str) -> str | None:
        return self.store.get_playlist(camera)

    def close(self) -> None:
        from ray import serve

        serve.delete("lookout")
        self.client.close()
        if self.record_dir:
            shutil.rmtree(self.record_dir, ignore_errors=True)


class LoopMode:
    """N processes of tools/user_loop.py, one per camera."""

    def __init__(self, a: argparse.Namespace, url: str, exclude: set[int], keep_dir: Path | None = None):
        self.a, self.url, self.exclude, self.keep_dir = a, url, exclude, keep_dir
        self.deployments: list[str] = []

    def measure(self, n: int, fps: float) -> dict:
        """Starts N loops, measures them, stops them (their files are kept in `keep_dir` when given)."""
        work = self.keep_dir or Path(tempfile.mkdtemp(prefix="lookout-capacity-loop-"))
        work.mkdir(parents=True, exist_ok=True)
        cams = [f"loop{i}" for i in range(n)]
        procs = []
        for c in cams:
            log = open(work / f"{c}.log", "wb")
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tools.user_loop",
                        self.url,
                        "--hls-dir",
                        str(work / c),
                        "--detections",
                        str(work / f"{c}.jsonl"),
                        "--onnx",
                        self.a.onnx,
                    ],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
        watcher = HlsWatcher(
            lambda c: _read(work / c / "index.m3u8"), lambda c, name: _read_bytes(work / c / name), cams
        ).start()
        detections = lambda c, since: [r for r in loop_detections(work / f"{c}.jsonl") if r[0] >= since]  # noqa: E731

        def dead() -> str | None:
            gone = [c for c, p in zip(cams, procs) if p.poll() is not None]
            if not gone:
                return None
            return f"user loop(s) {', '.join(gone)} exited: {(_read(work / (gone[0] + '.log')) or '')[-2000:]}"

        try:
            wait_ready(cams, watcher, detections, 0.0, dead)
            return measure_window(cams, watcher, detections, self.exclude, self.a.warmup_s, self.a.window_s, fps)
        finally:
            watcher.stop()
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
            if self.keep_dir is None:
                shutil.rmtree(work, ignore_errors=True)

    def close(self) -> None:
        pass


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def slope(rows: list[dict], key: str) -> float:
    """`key` per added camera: the least-squares slope of rows' `key` over N (nan with fewer than 2 N)."""
    pts = sorted({r["n"]: r[key] for r in rows}.items())
    if len(pts) < 2:
        return float("nan")
    mx = statistics.fmean(n for n, _ in pts)
    my = statistics.fmean(m for _, m in pts)
    return sum((n - mx) * (m - my) for n, m in pts) / sum((n - mx) ** 2 for n, _ in pts)


def summarize(mode: str, best: int, rows: list[dict], deployments: list[str]) -> dict:
    """One mode's line of the report."""
    at_best = next((r for r in rows if r["n"] == best), None)
    smallest = min(rows, key=lambda r: r["n"]) if rows else None
    return {
        "mode": mode,
        "max_cameras": best,
        "cores_per_camera": at_best["cores"] / best if at_best else float("nan"),
        "video_cores_per_camera": at_best["video_cores"] / best if at_best else float("nan"),
        "rss_mb": at_best["rss_mb"] if at_best else float("nan"),
        "rss_mb_per_camera": slope(rows, "rss_mb"),
        "cores_per_added_camera": slope(rows, "cores"),
        "latency_p50_ms": (
            1000 * statistics.median(c["latency_p50_s"] for c in smallest["cameras"].values())
            if smallest
            else float("nan")
        ),
        "latency_at_n": smallest["n"] if smallest else 0,
        **{
            f"{part}_p50_ms": 1000 * statistics.median(c[f"{part}_p50_s"] for c in smallest["cameras"].values())
            for part in ("to_detector", "in_detector")
            if smallest and all(f"{part}_p50_s" in c for c in smallest["cameras"].values())
        },
        "deployments": deployments,
        "rows": rows,
    }


def print_report(summaries: list[dict], a: argparse.Namespace) -> None:
    print(
        f"\ncapacity: clip={a.clip or DEFAULT_CLIP} over RTSP, detection at {DETECT_FPS:g} fps, window "
        f"{a.window_s:g} s, backend {a.backend} ({replicas(a)} replica(s) of {getattr(a, 'threads', 0) or 'default'} "
        f"thread(s), max batch {getattr(a, 'max_batch', 0) or 'as shipped'}), "
        f"model {app_onnx(a)}{f' (loop: {a.onnx})' if getattr(a, 'input_height', None) else ''}, "
        f"cpus={os.cpu_count()}, load at the end {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'mode':>10} {'cameras':>8} {'cores/camera':>13} {'cores/added camera':>19} {'RSS MB':>8} "
        f"{'MB/added camera':>16} {'latency p50 ms':>15} {'video path cores/camera':>24}"
    )
    for s in summaries:
        video = f"{s['video_alone_cores_per_camera']:.3f} @{s['video_alone_n']}" if "video_alone_n" in s else "-"
        print(
            f"{s['mode']:>10} {s['max_cameras']:>8} {s['cores_per_camera']:>13.3f} "
            f"{s['cores_per_added_camera']:>19.3f} {s['rss_mb']:>8.0f} {s['rss_mb_per_camera']:>16.0f} "
            f"{s['latency_p50_ms']:>11.0f} @{s['latency_at_n']:<3} {video:>24}"
        )
    for s in summaries:
        for r in sorted(s["rows"], key=lambda r: r["n"]):
            worst = min(r["cameras"].values(), key=lambda c: c["hls_ratio"])
            why = sorted({w for c in r["cameras"].values() for w in c["behind"]})
            stages = ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(r["cores_by_stage"].items(), key=lambda kv: -kv[1]) if v >= 0.005
            )
            print(
                f"  {s['mode']} N={r['n']}: {'keeps up' if r['keeps_up'] else 'behind'}; {r['cores']:.2f} cores "
                f"({stages}), RSS {r['rss_mb']:.0f} MB, worst HLS {worst['hls_ratio']:.1%}, load {r['load']:.1f}"
                + (f"; {'; '.join(why)}" if why else "")
            )
    if getattr(a, "quick", False):
        print(
            "  --quick: a smoke run; its few-second windows judge the HLS ratio to about +-2 %, so a verdict "
            "here is not a measurement"
        )
    for s in summaries:
        if "to_detector_p50_ms" in s:
            print(
                f"  {s['mode']}, latency p50 at N={s['latency_at_n']}: capture -> batch start "
                f"{s['to_detector_p50_ms']:.0f} ms (bus, Ray call, batch wait), batch start -> detections "
                f"{s['in_detector_p50_ms']:.0f} ms (bus read, decode, inference, results)"
            )
        if "video_alone_row" in s:
            r = s["video_alone_row"]
            worst = min(c["hls_ratio"] for c in r["cameras"].values())
            print(
                f"  {s['mode']}, detection off, N={r['n']}: video path (camera replicas + ffmpeg + Redis) "
                f"{r['video_cores']:.3f} cores, all processes {r['cores']:.2f} cores, worst HLS {worst:.1%}"
            )
        if s["deployments"]:
            videos = sorted({str(c.get("video")) for r in s["rows"] for c in r["cameras"].values()})
            print(f"  {s['mode']}: deployments {', '.join(s['deployments'])}; camera video: {', '.join(videos)}")


def main(a: argparse.Namespace) -> int:
    from tools.rtsp import RtspTestServer

    if a.quick:
        a.window_s, a.warmup_s, a.max_cameras = min(a.window_s, 6.0), min(a.warmup_s, 3.0), min(a.max_cameras, 1)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"--modes: unknown mode(s) {unknown or a.modes!r}; choose from {', '.join(MODES)}")
    if not 1 <= a.start <= a.max_cameras:
        raise ValueError(f"--start must be in 1..--max-cameras ({a.max_cameras}), got {a.start}")
    clip = Path(a.clip or DEFAULT_CLIP)
    if not clip.exists():
        raise FileNotFoundError(f"--clip: {clip} does not exist (scripts/fetch_demo.sh makes {DEFAULT_CLIP})")
    import cv2

    cap = cv2.VideoCapture(str(clip))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    cap.release()
    rtsp = RtspTestServer(free_port(), name="capacity", file=clip.resolve()).start()
    exclude = {rtsp.proc.pid}
    try:  # the source stands for a camera outside the box: a saturated box must not slow it down
        os.setpriority(os.PRIO_PROCESS, rtsp.proc.pid, -10)
    except OSError as exc:
        print(
            f"note: the RTSP source runs at normal priority ({exc}); at saturation it may fall below "
            f"{fps:g} fps itself",
            flush=True,
        )
    summaries = []
    try:
        app_modes = [m for m in modes if m != "loop"]  # the app's modes share one Ray, stopped before the loop runs
        if app_modes:
            summaries += _app_modes(a, app_modes, rtsp.url, fps, exclude)
        if "loop" in modes:
            summaries.append(_run_mode(a, "loop", LoopMode(a, rtsp.url, exclude), fps))
    finally:
        rtsp.cleanup()
    summaries.sort(key=lambda s: modes.index(s["mode"]))
    print_report(summaries, a)
    print(json.dumps({"fps": fps, "window_s": a.window_s, "summaries": summaries}, default=str))
    return 0


def _app_modes(a: argparse.Namespace, modes: list[str], url: str, fps: float, exclude: set[int]) -> list[dict]:
    import ray
    from ray import serve

    from tools.procs import LocalRedis
    from tools.scale_bench import init_ray

    rds = LocalRedis()
    port = free_port()
    out = []
    try:
        init_ray(address="local")
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for m in modes:
            out.append(_run_mode(a, m, AppMode(a, m, url, rds.url, port, exclude), fps))
    finally:
        serve.shutdown()
        ray.shutdown()
        rds.close()
    return out


def _run_mode(a: argparse.Namespace, mode: str, runner, fps: float) -> dict:
    rows: list[dict] = []

    def keeps_up(n: int) -> bool:
        print(f"{mode}: {n} camera(s) ...", flush=True)
        try:
            row = runner.measure(n, fps)
        except RuntimeError as exc:  # not ready in time: that N does not keep up
            print(f"{mode}: {n} camera(s): {exc}", flush=True)
            return False
        rows.append(row)
        why = sorted({w for c in row["cameras"].values() for w in c["behind"]})
        print(
            f"{mode}: {n} camera(s): {'keeps up' if row['keeps_up'] else 'behind: ' + '; '.join(why)} "
            f"({row['cores']:.2f} cores, RSS {row['rss_mb']:.0f} MB)",
            flush=True,
        )
        return row["keeps_up"]

    video_alone = None
    try:
        best = search(keeps_up, a.start, a.max_cameras)
        if mode in (
            "copy",
            "int8",
            "record",
        ):  # the video path alone: the same cameras, detection off (frames still on the bus)
            n = max(best, 1)
            print(f"{mode}, detection off: {n} camera(s) ...", flush=True)
            try:
                video_alone = runner.measure(n, fps, detect=False)
            except RuntimeError as exc:
                print(f"{mode}, detection off: {n} camera(s): {exc}", flush=True)
    finally:
        runner.close()
    out = summarize(mode, best, rows, runner.deployments)
    if video_alone:
        n = video_alone["n"]
        out.update(
            video_alone_n=n,
            video_alone_cores_per_camera=video_alone["video_cores"] / n,
            video_alone_all_cores_per_camera=video_alone["cores"] / n,
            video_alone_row=video_alone,
        )
    return out
