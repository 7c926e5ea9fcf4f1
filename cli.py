"""The `lookout` command: a thin dispatcher into the packages."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_MODELS = Path("data/models")


def _convert(a: argparse.Namespace) -> int:
    from pipeline.models.onnx_export import convert, ensure_onnx

    size = a.size if a.height is None else (a.size, a.height)
    if a.if_stale:
        out = ensure_onnx(a.cfg, a.weights, a.output, size)
    else:
        out = convert(a.cfg, a.weights, a.output, input_size=size)
    print(out)
    return 0


def _fetch_weights(a: argparse.Namespace) -> int:
    from pipeline.models.fetch import ensure_yolov4_tiny

    files = ensure_yolov4_tiny(Path(a.dest))
    for p in (files.cfg, files.weights, files.names):
        print(p)
    return 0


def _check(a: argparse.Namespace) -> int:
    from pipeline.config import ConfigError, missing_files, parse_args
    from pipeline.config_file import load_app_args

    try:
        cfg = parse_args(load_app_args(a.config))
    except ConfigError as exc:
        print(f"{a.config}: {exc}" if not str(exc).startswith(a.config) else str(exc), file=sys.stderr)
        return 2
    from hls.hwaccel import hwaccel_problems
    from hls.video_path import check_lines

    problems = missing_files(cfg) + hwaccel_problems(cfg)
    for p in problems:
        print(f"{a.config}: {p}", file=sys.stderr)
    if problems:
        return 2
    for line in check_lines(cfg):  # which path each camera's video takes, and why
        print(f"{a.config}: {line}")
    print(f"{a.config}: OK ({len(cfg.cameras)} camera(s), model {cfg.model.name})")
    return 0


def _eval(a: argparse.Namespace) -> int:
    from pipeline.evaluate import evaluate_folder, format_per_class

    report = evaluate_folder(
        a.images,
        a.annotations,
        onnx_path=a.onnx,
        labels_path=a.labels,
        backend=a.backend,
        batch_size=a.batch,
        letter_box=a.letter_box,
    )
    print(format_per_class(report))
    print(json.dumps(report, indent=2))
    return 0


def _build_engine(a: argparse.Namespace) -> int:
    from pipeline.models.backends.tensorrt import build_engine

    path = build_engine(
        a.onnx,
        precision=a.precision,
        max_batch=a.max_batch,
        calib_images=Path(a.calib_images) if a.calib_images else None,
        cache_dir=Path(a.cache_dir),
        eval_annotations=Path(a.eval_annotations) if a.eval_annotations else None,
        force=a.force,
    )
    print(path)
    return 0


def _bench(a: argparse.Namespace) -> int:
    a.cameras = a.cameras or (4 if a.what in ("soak", "scale") else 2)
    if a.what == "scale":
        from tools.scale_bench import main as scale_main

        a.replicas = a.replicas or "1,2"
        return scale_main(a)
    a.replicas = int(a.replicas or 1)
    if a.what == "soak":
        from tools.soak import main as soak_main

        return soak_main(a)
    if a.what == "load":
        from tools.load_bench import main as load_main

        return load_main(a)
    if a.what == "faults":
        from tools.fault_bench import main as faults_main

        return faults_main(a)
    if a.what == "capacity":
        from tools.capacity_bench import main as capacity_main

        return capacity_main(a)
    if a.what == "latency":
        from tools.latency_bench import main as latency_main

        return latency_main(a)
    if a.what == "motion":
        from tools.motion_bench import main as motion_main

        return motion_main(a)
    if a.what == "sizes":
        from tools.input_size_bench import main as sizes_main

        return sizes_main(a)
    from tools.bench import main as bench_main

    return bench_main(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookout", description="Lookout: multi-camera detection on Ray Serve")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert darknet cfg+weights to ONNX")
    c.add_argument("cfg")
    c.add_argument("weights")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--size", type=int, default=416, help="network input width in px (multiple of 32)")
    c.add_argument(
        "--height",
        type=int,
        default=None,
        help="network input height in px when it differs from the width (e.g. 320 for 4:3 cameras)",
    )
    c.add_argument("--if-stale", action="store_true", help="only convert when the output is missing or stale")
    c.set_defaults(func=_convert)

    f = sub.add_parser("fetch-weights", help="download the official YOLOv4-tiny weights (checksum verified)")
    f.add_argument("--dest", default=str(DEFAULT_MODELS))
    f.set_defaults(func=_fetch_weights)

    k = sub.add_parser("check", help="validate a serve_config.yaml")
    k.add_argument("config", nargs="?", default="serve_config.yaml")
    k.set_defaults(func=_check)

    e = sub.add_parser("eval", help="COCO mAP of the detector on a folder of images")
    e.add_argument("--images", default=None, help="image folder (default: ../shared/assets/coco-mini/images)")
    e.add_argument("--annotations", default=None, help="COCO instances JSON")
    e.add_argument("--onnx", default=str(DEFAULT_MODELS / "yolov4-tiny-416.onnx"))
    e.add_argument("--labels", default=None)
    e.add_argument("--backend", default="onnxruntime")
    e.add_argument("--batch", type=int, default=1)
    e.add_argument(
        "--letter-box",
        choices=["auto", "true", "false"],
        default="auto",
        help="fit images keeping their aspect ratio (true) or stretched (false); "
        "auto: as the model's darknet cfg says (model.letter_box)",
    )
    e.set_defaults(func=_eval)

    g = sub.add_parser("build-engine", help="build (or reuse) a cached TensorRT engine for an ONNX model")
    g.add_argument("onnx")
    g.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    g.add_argument("--max-batch", type=int, default=8, help="largest batch of the optimization profile")
    g.add_argument("--calib-images", default=None, help="folder of real images (int8 calibration)")
    g.add_argument(
        "--eval-annotations", default=None, help="COCO JSON for those images: reject an engine that loses too much mAP"
    )
    g.add_argument("--cache-dir", default="data/engines")
    g.add_argument("--force", action="store_true", help="rebuild even if a cached engine matches")
    g.set_defaults(func=_build_engine)

    b = sub.add_parser("bench", help="bare detector vs full pipeline, side by side; `bench latency`: glass to glass")
    b.add_argument(
        "what",
        nargs="?",
        default="pipeline",
        choices=["pipeline", "latency", "soak", "scale", "load", "faults", "capacity", "motion", "sizes"],
        help="pipeline (default): detector vs pipeline; latency: HLS glass-to-glass in Chromium; "
        "soak: N minutes of 4 cameras, fails if anything grows without bound; "
        "scale: frames/s with 1, 2, ... detector replicas and recovery after node kills; "
        "load: N HLS viewers + API clients on one camera through the gateway; "
        "faults: inject each fault --repeats times, time to recover and frames lost; "
        "capacity: most RTSP cameras the copy, transcode and user-loop paths keep up with; "
        "motion: motion-gated vs always-on detection on one clip (detector CPU, events found); "
        "sizes: network input sizes side by side (CPU per frame, mAP, agreement on real video)",
    )
    b.add_argument(
        "--clip",
        default=None,
        help="video file (default: data/demo/vtest.avi; motion: "
        "../shared/assets/videos/one-by-one-person-detection.mp4)",
    )
    b.add_argument("--detect-fps", type=float, default=5.0, help="motion: detector frames per second")
    b.add_argument(
        "--tracked-interval-s",
        type=float,
        default=0.6,
        help="motion: runs with cameras[].motion.tracked_interval_s set to this, without and with the strips "
        "(0: no such runs)",
    )
    b.add_argument(
        "--region-widths",
        default="96,128,192,256",
        help="motion: a run that detects moving frames on strips of these model widths (model.region_widths_px; "
        "empty: no such run)",
    )
    b.add_argument("--onnx", default=str(DEFAULT_MODELS / "yolov4-tiny-416.onnx"))
    b.add_argument(
        "--backend",
        default="onnxruntime",
        help="model.backend; pipeline: several, comma-separated (openvino,onnxruntime), compares the "
        "bare detector of each side by side instead of running the pipeline",
    )
    b.add_argument("--batch", default="1", help="comma-separated batch sizes, e.g. 1,4,8")
    b.add_argument("--cameras", type=int, default=None, help="cameras (default: 2 for pipeline, 4 for soak)")
    b.add_argument("--seconds", type=float, default=40.0, help="pipeline, load: measuring window")
    b.add_argument("--frames", type=int, default=200, help="frames in the bare run; sizes: frames of each video")
    b.add_argument(
        "--sizes",
        default="416,416x352,416x320,352",
        help="sizes: network inputs to compare, a side "
        "or WIDTHxHEIGHT, comma-separated; the first is the reference of the agreement columns",
    )
    b.add_argument("--precision", default="fp32", help="sizes: fp32, int8 or fp32,int8 (each size in each)")
    b.add_argument("--rounds", type=int, default=4, help="sizes: timing rounds over every model")
    b.add_argument(
        "--threads",
        type=int,
        default=0,
        help="pipeline: inference threads per replica; motion: of the detector; model.intra_op_threads (0: default)",
    )
    b.add_argument(
        "--replicas",
        default=None,
        help="pipeline: detector replicas (default 1); scale: replica counts, e.g. 1,2,4 (default 1,2)",
    )
    b.add_argument(
        "--bare-threads",
        default="0",
        help="bare loop: inference threads (0: default); with several "
        "--backend, comma-separated thread counts to compare, e.g. 1,2",
    )
    b.add_argument("--openvino-streams", type=int, default=1, help="model.openvino.streams of an openvino backend")
    b.add_argument("--bus-codec", choices=["jpeg", "raw"], default="jpeg", help="pipeline: frames on the bus")
    b.add_argument(
        "--bare",
        action="store_true",
        help="pipeline with --backend torch: no Ray, no Redis; inference "
        "on prepared tensors and the JPEG-bytes path, FP16 and FP32, then the accuracy check",
    )
    b.add_argument("--device", default=None, help="--bare: torch device, cuda (default) or cpu")
    b.add_argument("--iterations", default="50", help="--bare: timed batches per batch size")
    b.add_argument("--preset", default="veryfast", help="pipeline: libx264 preset of the HLS encoders")
    b.add_argument("--boxes", default="burned,browser", help="latency: hls.boxes variants to measure")
    b.add_argument("--segment-s", type=float, default=1.0, help="latency, load: HLS segment duration")
    b.add_argument(
        "--hls",
        default="ts",
        help="latency: HLS variants to measure, comma-separated: ts (standard, "
        "MPEG-TS), fmp4 (standard, fMP4), ll (Low-Latency HLS, fMP4 parts)",
    )
    b.add_argument(
        "--hls-only",
        action="store_true",
        help="latency: no pipeline (no Ray, no detector): the clip "
        "goes straight into the HLS segmenter, to compare the --hls variants alone",
    )
    b.add_argument("--minutes", type=float, default=30.0, help="soak: how long to run")
    b.add_argument("--interval-s", type=float, default=10.0, help="soak: seconds between samples")
    b.add_argument("--out", default="docs/soak", help="soak: folder for soak.csv and soak.png")
    b.add_argument("--camera-fps", type=float, default=25.0, help="scale: frames/s each camera offers")
    b.add_argument("--max-batch", type=int, default=4, help="scale, capacity: detector max_batch_size")
    b.add_argument("--kills", type=int, default=3, help="scale: node kills for the failover timing (0: none)")
    b.add_argument("--viewers", type=int, default=200, help="load: concurrent HLS viewers of one camera")
    b.add_argument("--api-clients", type=int, default=10, help="load: concurrent API clients")
    b.add_argument("--api-pause-s", type=float, default=0.5, help="load: each API client's pause between rounds")
    b.add_argument(
        "--wrk-connections", type=int, default=64, help="load: wrk connections (needs `apt-get install wrk`)"
    )
    b.add_argument("--wrk-seconds", type=int, default=20, help="load: wrk run per URL (0: skip wrk)")
    b.add_argument(
        "--proxy",
        choices=["serve", "haproxy", "both"],
        default="both",
        help="load: what fronts the gateway: Serve's Python proxy, Ray Serve's HAProxy "
        "(RAY_SERVE_ENABLE_HA_PROXY=1), or both, one after the other, side by side",
    )
    b.add_argument(
        "--gateway-max-ongoing",
        type=int,
        default=0,
        help="load: Serve max_ongoing_requests of the gateway replica (0: as shipped)",
    )
    b.add_argument("--repeats", type=int, default=3, help="faults: injections of each fault")
    b.add_argument("--only", default=None, help="faults: comma-separated parts of fault names to run (default: all)")
    b.add_argument("--timeout-s", type=float, default=120.0, help="faults: longest wait for a recovery")
    b.add_argument("--faults-json", default=None, help="faults: also write every run's figures to this JSON file")
    b.add_argument(
        "--modes",
        default="copy,transcode,loop",
        help="capacity: paths to measure, comma-separated: "
        "copy (camera worker, boxes: browser), int8 (copy with model.precision int8), record (copy + "
        "recording), transcode (boxes: burned), loop (tools/user_loop.py)",
    )
    b.add_argument(
        "--calib-images", default=None, help="capacity: int8's calibration frames (default: the clip's, one every 5 s)"
    )
    b.add_argument(
        "--input-height",
        type=int,
        default=None,
        help="capacity: the app modes' network input height "
        "(model.input_height_px; --onnx converted to it); the user loop keeps --onnx",
    )
    b.add_argument("--max-cameras", type=int, default=16, help="capacity: most cameras tried")
    b.add_argument("--start", type=int, default=1, help="capacity: cameras of the first step (then doubled, bisected)")
    b.add_argument("--window-s", type=float, default=30.0, help="capacity: measuring window of each step")
    b.add_argument("--warmup-s", type=float, default=10.0, help="capacity: warm-up once every camera streams")
    b.add_argument(
        "--quick",
        action="store_true",
        help="capacity: a smoke run (1 camera, short windows); motion: the clip's first 30 s",
    )
    b.set_defaults(func=_bench)

    from gateway.auth.manage import add_subcommands

    add_subcommands(sub)  # lookout users add|list|remove|passwd, lookout clients add|list|remove
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"lookout {args.command}: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # BackendUnavailable and build errors carry a message for the user
        print(f"lookout {args.command}: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
