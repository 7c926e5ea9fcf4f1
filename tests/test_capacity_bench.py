"""`lookout bench capacity`'s pieces, for real at one camera: the user loop over a live RTSP stream, the
frame counts of real ffmpeg segments, the readers of real detections; and the pure parts (the search,
the verdicts, the user loop's ffmpeg command line)."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import pytest

from rtsp_fixtures import rtsp_server_factory  # noqa: F401
from tools import capacity_bench as cb
from tools.user_loop import hls_argv

CLIP = "videos/vtest.avi"


def ffprobe_frames(path: Path) -> int:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_packets",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[0].rstrip(","))  # MPEG-TS lists the stream under its program too


def test_hls_argv_argument_by_argument(tmp_path):
    assert hls_argv(tmp_path, 768, 576, 10.0) == [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        "768x576",
        "-r",
        "10",
        "-i",
        "pipe:0",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "10",
        "-keyint_min",
        "10",
        "-sc_threshold",
        "0",
        "-f",
        "hls",
        "-hls_time",
        "1",
        "-hls_list_size",
        "6",
        "-hls_flags",
        "delete_segments+program_date_time+independent_segments",
        "-hls_segment_filename",
        str(tmp_path / "seg%06d.ts"),
        str(tmp_path / "index.m3u8"),
    ]
    argv = hls_argv(tmp_path, 320, 240, 25.0, preset="ultrafast", segment_s=2.0, list_size=3)
    assert argv[argv.index("-preset") + 1] == "ultrafast"
    assert argv[argv.index("-g") + 1] == "50" and argv[argv.index("-hls_time") + 1] == "2"
    assert argv[argv.index("-hls_list_size") + 1] == "3" and argv[argv.index("-s") + 1] == "320x240"


@pytest.mark.parametrize("container", ["ts", "fmp4"])
def test_segment_frames_match_ffprobe(tmp_path, assets_dir, container):
    """Real segments from ffmpeg: our count of frames equals ffprobe's."""
    src = assets_dir / CLIP
    if container == "ts":
        out = tmp_path / "seg.ts"
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-i",
                str(src),
                "-frames:v",
                "23",
                "-an",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-f",
                "mpegts",
                str(out),
            ],
            check=True,
        )
        data = out.read_bytes()
        probe = out
    else:
        out = tmp_path / "frag.mp4"
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-i",
                str(src),
                "-frames:v",
                "23",
                "-an",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "10",
                "-f",
                "mp4",
                "-movflags",
                "+frag_keyframe+empty_moov+default_base_moof",
                str(out),
            ],
            check=True,
        )
        data = out.read_bytes()
        probe = out
        from hls.fmp4 import find_boxes

        first_moof = min(p for p, _ in find_boxes(data, [b"moof"])) - 8
        data = data[first_moof:]  # the media segment without its init section, as the HLS store holds it
    assert ffprobe_frames(probe) == 23
    assert cb.segment_frames(data) == 23


def test_segment_frames_counts_distinct_captures():
    """A segment whose encoder repeated images holds only the distinct source frames its DATERANGE lists."""
    assert cb.segment_frames(b"", [0, 100, 100, 200, 200, 200]) == 3


def test_hls_ratio_and_verdicts():
    t0 = 1000.0
    steady = [cb.Seen(f"s{i}", t0 + 0.3 + i, 10, 1.0) for i in range(30)]
    assert cb.hls_ratio(steady, t0, t0 + 30, 10.0) == pytest.approx(1.0)
    dropping = [cb.Seen(f"s{i}", t0 + 0.3 + i, 9, 1.0) for i in range(30)]
    assert cb.hls_ratio(dropping, t0, t0 + 30, 10.0) == pytest.approx(0.9)
    stalled = steady[:10]  # nothing published for the last 20 s of the window
    assert cb.hls_ratio(stalled, t0, t0 + 30, 10.0) < 0.6
    assert cb.hls_ratio(steady[:1], t0, t0 + 30, 10.0) == 0.0
    ok = {"hls_ratio": 0.995, "detect_fps": 4.9, "latency_p50_s": 0.1, "latency_p95_s": 0.3}
    assert cb.behind(ok) == []
    assert [w.split(" ")[0] for w in cb.behind({**ok, "hls_ratio": 0.97})] == ["HLS"]
    assert "detections/s" in cb.behind({**ok, "detect_fps": 4.7})[0]
    assert "p95" in cb.behind({**ok, "latency_p95_s": 1.2})[0]
    assert len(cb.behind({**ok, "latency_p95_s": float("nan"), "detect_fps": 0.0})) == 2


def test_search_doubles_then_bisects():
    for capacity, start, top, expected_calls in [
        (5, 1, 16, [1, 2, 4, 8, 6, 5]),
        (16, 1, 16, [1, 2, 4, 8, 16]),
        (0, 1, 16, [1]),
        (3, 4, 16, [4, 2, 3]),
        (12, 1, 12, [1, 2, 4, 8, 12]),
    ]:
        calls = []

        def keeps_up(n, capacity=capacity):
            calls.append(n)
            return n <= capacity

        assert cb.search(keeps_up, start, top) == capacity
        assert calls == expected_calls
    with pytest.raises(ValueError, match="--start"):
        cb.search(lambda n: True, 5, 4)


def test_per_added_camera_slope():
    rows = [{"n": 1, "rss_mb": 300.0}, {"n": 2, "rss_mb": 450.0}, {"n": 4, "rss_mb": 750.0}]
    assert cb.slope(rows, "rss_mb") == pytest.approx(150.0)
    assert cb.slope(rows[:1], "rss_mb") != cb.slope(rows[:1], "rss_mb")  # nan with one N


def test_app_detections_read_real_results(redis_client):
    """The reader of the app's detections, on results the detector's own ResultStore wrote to a real Redis."""
    from pipeline.bus import ResultStore
    from pipeline.types import Detections, FrameRef, FrameResult

    now = time.time()
    results = [
        FrameResult(
            FrameRef("cam", i, now - 1 + i * 0.2),
            Detections.empty(),
            "m",
            {"batch_started_at": now - 1 + i * 0.2 + 0.01, "detected_at": now - 1 + i * 0.2 + 0.05, "latency_s": 0.05},
        )
        for i in range(5)
    ]
    ResultStore(redis_client).publish(results, None)
    records = cb.app_detections(redis_client, "cam", now - 10)
    assert [(round(d - c, 3), round(b - c, 3)) for c, d, b in records] == [(0.05, 0.01)] * 5
    fig = cb.detection_figures(records, now - 1, now)
    assert fig["detect_fps"] == pytest.approx(5.0)
    assert fig["latency_p50_s"] == pytest.approx(0.05, abs=1e-5)  # timings are kept to the microsecond
    assert fig["to_detector_p50_s"] == pytest.approx(0.01, abs=1e-5)
    assert fig["in_detector_p50_s"] == pytest.approx(0.04, abs=1e-5)
    assert "to_detector_p50_s" not in cb.detection_figures([(c, d) for c, d, _ in records], now - 1, now)


@pytest.mark.slow
def test_user_loop_one_camera_for_real(rtsp_server_factory, assets_dir, yolo_tiny_onnx, tmp_path):  # noqa: F811
    """The loop mode at N=1 over a live RTSP stream: the user loop publishes HLS whose segments hold real
    frames and writes a detection line for every 2nd frame; the measurement reads them back."""
    server = rtsp_server_factory(name="cap", file=assets_dir / CLIP)
    a = argparse.Namespace(onnx=str(yolo_tiny_onnx), warmup_s=1.0, window_s=4.0)
    keep = tmp_path / "keep"
    mode = cb.LoopMode(a, server.url, {server.proc.pid}, keep_dir=keep)
    row = mode.measure(1, 10.0)
    cam = row["cameras"]["loop0"]
    assert row["n"] == 1 and row["rss_mb"] > 50 and row["cores"] > 0
    assert cam["hls_ratio"] > 0 and cam["detect_fps"] > 0 and 0 < cam["latency_p50_s"] <= cam["latency_p95_s"]
    assert set(row["cores_by_stage"]) >= {"ffmpeg"}  # the loop's own ffmpeg child was counted
    segments = sorted((keep / "loop0").glob("seg*.ts"))
    assert segments, "the user loop wrote no HLS segments"
    for seg in segments[:-1]:  # the newest may still be written
        assert cb.segment_frames(seg.read_bytes()) == ffprobe_frames(seg) > 0
    lines = [json.loads(x) for x in (keep / "loop0.jsonl").read_text().splitlines()]
    assert lines and all(x["captured_at"] < x["detected_at"] for x in lines)
    assert any(x["boxes"] > 0 for x in lines)  # vtest shows people


def test_hls_watcher_reads_a_real_store(redis_client, assets_dir, tmp_path):
    """The watcher on the app's Redis HLS store: real ffmpeg segments, a playlist as the segmenter renders
    it (one segment with a DATERANGE of repeated images); each segment counted once, when it appears."""
    from hls.playlist import Entry, MediaPlaylist
    from hls.store import RedisHlsStore

    store = RedisHlsStore(redis_client, ttl_s=60)
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(assets_dir / CLIP),
            "-frames:v",
            "30",
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "10",
            "-f",
            "segment",
            "-segment_time",
            "1",
            "-reset_timestamps",
            "1",
            str(tmp_path / "s%d.ts"),
        ],
        check=True,
    )
    names = sorted(p.name for p in tmp_path.glob("s*.ts"))
    assert len(names) == 3
    for name in names:
        store.put_segment("cam", name, (tmp_path / name).read_bytes())
    pl, now = MediaPlaylist(), time.time()
    pl.append(Entry(names[0], 1.0, now - 3), 6)
    store.put_playlist("cam", pl.render())
    watcher = cb.HlsWatcher(store.get_playlist, store.get_segment, ["cam"])
    watcher.poll("cam")
    pl.append(Entry(names[1], 1.0, now - 2, captures_ms=[0, 0, 0, 300, 400, 500, 600, 700, 800, 900]), 6)
    pl.append(Entry(names[2], 1.0, now - 1), 6)
    store.put_playlist("cam", pl.render())
    watcher.poll("cam")
    watcher.poll("cam")
    assert [(s.name, s.frames) for s in watcher.seen["cam"]] == [(names[0], 10), (names[1], 8), (names[2], 10)]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--modes", "copy,bogus"], "--modes: unknown mode(s) ['bogus']"),
        (["--start", "0"], "--start must be in 1..--max-cameras (16), got 0"),
        (["--start", "5", "--max-cameras", "4"], "--start must be in 1..--max-cameras (4), got 5"),
        (["--clip", "no/such.mp4"], "--clip: no/such.mp4 does not exist"),
    ],
)
def test_bad_options_are_named(capsys, argv, message):
    """Bad options: one line naming the option and the value, before anything starts."""
    import cli

    assert cli.main(["bench", "capacity", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_app_modes_configure_the_paths_they_name(yolo_tiny_onnx, assets_dir):
    """The config each app mode deploys is valid and puts its cameras on the path the mode is named for."""
    from deployments.app import camera_groups
    from pipeline.config import camera_path, parse_args

    a = argparse.Namespace(
        onnx=str(yolo_tiny_onnx),
        backend="onnxruntime",
        threads=1,
        max_batch=1,
        clip=str(assets_dir / "videos" / "vtest.avi"),
        input_height=None,
    )
    for mode, path in (("copy", "worker"), ("int8", "worker"), ("record", "worker"), ("transcode", "annotate")):
        runner = cb.AppMode.__new__(cb.AppMode)  # the config only: no Redis, no Ray
        runner.a, runner.mode, runner.url = a, mode, "rtsp://127.0.0.1:8554/capacity"
        runner.redis_url, runner.port = "redis://127.0.0.1:6379/0", 8000
        runner.record_dir = "/tmp/rec" if mode == "record" else None
        runner.int8 = cb.int8_model(a) if mode == "int8" else {}
        runner.onnx = cb.app_onnx(a)
        model = parse_args(runner.args(1)).model
        assert model.precision == ("int8" if mode == "int8" else "fp16")  # fp16: the default, FP32 on a CPU
        if mode == "int8":  # calibrated on frames of the clip, one every 5 s (vtest.avi: 79 s)
            assert len(list(Path(model.calib_images).glob("*.jpg"))) == 16
        assert parse_args(runner.args(1)).detector.max_batch_size == 1
        for detect in (True, False):
            cfg = parse_args(runner.args(3, detect))
            assert [camera_path(c, cfg.hls)[0] for c in cfg.cameras] == [path] * 3
            assert [c.detect for c in cfg.cameras] == [detect] * 3
            assert cfg.model.intra_op_threads == 1 and not cfg.events.enabled
            assert [cfg.record.for_camera(c).enabled for c in cfg.cameras] == [mode == "record"] * 3
        groups = camera_groups(parse_args(runner.args(3)))
        assert [len(g) for _, g in groups] == ([3] if path == "worker" else [])
    a.input_height = 320  # --input-height: the app's model converted to 416x320 and said so in its config
    runner.onnx = cb.app_onnx(a)
    model = parse_args(runner.args(1)).model
    assert model.input_shape_px == (416, 320) and Path(model.onnx).name == "yolov4-tiny-416x320.onnx"


@pytest.mark.e2e
@pytest.mark.slow
def test_copy_mode_one_camera_for_real(rtsp_server_factory, assets_dir, yolo_tiny_onnx, monkeypatch):  # noqa: F811
    """The copy mode at N=1 as the tool runs it (Redis, Ray Serve, the app, then detection off): its camera is
    stream-copied by a camera worker, and every figure comes from the app's real output."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    server = rtsp_server_factory(name="cap", file=assets_dir / CLIP)
    a = argparse.Namespace(
        onnx=str(yolo_tiny_onnx), backend="onnxruntime", threads=1, warmup_s=1.0, window_s=4.0, start=1, max_cameras=1
    )
    [summary] = cb._app_modes(a, ["copy"], server.url, 10.0, {server.proc.pid})
    assert any(d.startswith("cameras-") for d in summary["deployments"])
    [row] = summary["rows"]
    cam = row["cameras"]["copy0"]
    assert cam["video"] == "copy"  # what the running camera wrote: its H.264 is copied, not re-encoded
    assert cam["hls_ratio"] > 0 and cam["detect_fps"] > 0 and 0 < cam["latency_p50_s"] <= cam["latency_p95_s"]
    assert row["cores_by_stage"]["detector"] > 0 and row["cores_by_stage"]["camera workers"] > 0
    assert row["rss_mb"] > 100
    alone = summary["video_alone_row"]
    assert alone["cameras"]["copy0"]["hls_ratio"] > 0 and alone["video_cores"] > 0
    assert alone["cameras"]["copy0"]["detect_fps"] == 0  # detect: false sends nothing to the detector
