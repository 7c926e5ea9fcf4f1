"""The torch backend's JPEG-bytes path (decode, fit, inference and NMS on the device) against the
host path of ONNX Runtime: the same detections on real frames as the bus carries them.

On CPU torch the same code runs as on CUDA; `gpu` tests run it on the GPU (nvJPEG, fp16).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (the torch backend is optional: pip install torch)")

from test_convert_vs_opencv import coco_image, video_frame  # noqa: E402

from pipeline.config import ModelConfig  # noqa: E402
from pipeline.detector import Detector  # noqa: E402
from pipeline.frames import decode_frame, encode_jpeg, encode_raw  # noqa: E402
from pipeline.models.backends.torch_cuda import TorchBackend, greedy_batched_nms, torchvision_ops  # noqa: E402
from pipeline.models.labels import load_labels  # noqa: E402
from pipeline.models.resolve import ResolvedModel  # noqa: E402
from pipeline.models.yolo import nms  # noqa: E402
from tools.bench import detection_diff  # noqa: E402

BOX_PX, SCORE_TOL = 1.0, 1e-3
FRAMES = (0, 60, 120, 250, 400, 600)


@pytest.fixture(scope="module")
def model(yolo_tiny, yolo_tiny_onnx) -> ResolvedModel:
    return ResolvedModel(onnx=yolo_tiny_onnx, cfg=yolo_tiny.cfg, weights=yolo_tiny.weights, labels=yolo_tiny.names)


def detectors(model: ResolvedModel, device: str | None, **settings) -> tuple[Detector, Detector]:
    """(torch on `device`, ONNX Runtime on CPU), with the same model settings."""
    torch_settings = ModelConfig(onnx=str(model.onnx), backend="torch", **settings)
    backend = TorchBackend.from_model(model, torch_settings, 8, device=device)
    ort = Detector.from_config(
        ModelConfig(onnx=str(model.onnx), backend="onnxruntime", **settings), model.onnx, model.labels
    )
    return Detector(backend, load_labels(model.labels), torch_settings), ort


@pytest.fixture(scope="module")
def jpegs(assets_dir) -> list[bytes]:
    """Real vtest frames and a COCO photo (another size), JPEG-encoded as the frame bus does."""
    images = [video_frame(assets_dir, i) for i in FRAMES] + [coco_image(assets_dir)]
    return [encode_jpeg(img, 85) for img in images]


def check_close(ours, ref, conf_threshold, box_px=BOX_PX, score_tol=SCORE_TOL, what=""):
    diff = detection_diff(ours, ref, conf_threshold, borderline=score_tol)
    print(f"\n{what}: {diff}")
    assert diff["pairs"] >= sum(len(d) for d in ref) - 2 and diff["pairs"] > 10, diff
    assert diff["unpaired"] == 0, diff
    assert diff["max_box_diff_px"] <= box_px and diff["max_score_diff"] <= score_tol, diff
    return diff


@pytest.mark.parametrize("letter_box", [False, True])
def test_jpeg_path_on_cpu_torch_equals_onnxruntime(model, jpegs, letter_box):
    torch_det, ort_det = detectors(model, "cpu", letter_box=letter_box)
    ours, timings = torch_det.detect_encoded(jpegs)
    ref, _ = ort_det.detect([decode_frame(j) for j in jpegs])
    assert set(timings) == {"preprocess_s", "infer_s", "postprocess_s"}
    assert all(isinstance(d.xyxy, np.ndarray) and d.xyxy.dtype == np.float32 for d in ours)
    check_close(
        ours, ref, torch_det.settings.conf_threshold, what=f"torch cpu JPEG path vs ORT (letter_box={letter_box})"
    )
    # a batch is the frames one by one
    singles = [torch_det.detect_encoded([j])[0][0] for j in jpegs[:3]]
    for a, b in zip(singles, ours[:3]):
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-2)
        np.testing.assert_array_equal(a.class_id, b.class_id)


def test_jpeg_path_class_filter_max_detections_and_source_sizes(model, jpegs):
    settings = {"classes": ["person"], "max_detections": 3, "conf_threshold": 0.2}
    torch_det, ort_det = detectors(model, "cpu", **settings)
    sizes = [(1536, 1152)] * (len(jpegs) - 1) + [None]
    ours, _ = torch_det.detect_encoded(jpegs, sizes)
    images = [decode_frame(j) for j in jpegs]
    ref, _ = ort_det.detect(images, sizes)
    assert all(len(d) <= 3 for d in ours) and any(len(d) == 3 for d in ours)
    assert all(set(d.class_id.tolist()) <= {0} for d in ours)
    assert ours[0].xyxy[:, 2].max() > images[0].shape[1]  # in the source's pixels, twice the bus image's
    check_close(ours, ref, 0.2, box_px=2 * BOX_PX, what="person only, 3 at most, source 2x")


def test_other_backends_and_raw_frames_decode_on_the_host(model, jpegs, assets_dir):
    torch_det, ort_det = detectors(model, "cpu")
    images = [decode_frame(j) for j in jpegs[:3]]
    via_bytes, _ = ort_det.detect_encoded(jpegs[:3])
    direct, _ = ort_det.detect(images)
    for a, b in zip(via_bytes, direct):
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
    raw = [encode_raw(img) for img in images]
    mixed = [raw[0], jpegs[1], raw[2]]
    got, _ = torch_det.detect_encoded(mixed)
    want, _ = torch_det.detect([decode_frame(p) for p in mixed])
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
    with pytest.raises(
        ValueError, match=r"jpegs\[1\] must be JPEG bytes \(starting FF D8\), got bytes starting 89504e47"
    ):
        torch_det.backend.decode_on_device([jpegs[0], b"\x89PNG\r\n"])
    with pytest.raises(ValueError, match="source_sizes has 1 entries for 2 payloads"):
        torch_det.detect_encoded(jpegs[:2], [None])
    assert torch_det.detect_encoded([]) == ([], {})


def test_greedy_nms_equals_host_nms_per_group():
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 300, (400, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (400, 2)).astype(np.float32)], 1)
    scores = rng.uniform(0.1, 1, 400).astype(np.float32)
    groups = rng.integers(0, 5, 400)
    keep = greedy_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), 0.45)
    keep = keep.numpy()
    assert np.all(np.diff(scores[keep]) <= 0), "best first"
    for g in range(5):
        idx = np.flatnonzero(groups == g)
        want = idx[nms(boxes[idx], scores[idx], 0.45)]
        np.testing.assert_array_equal(keep[groups[keep] == g], want)
    assert 0 < len(keep) < 400
    tv = torchvision_ops()
    if tv is not None:  # where torchvision loads, its batched_nms is the one the path uses: the same result
        ref = tv.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), 0.45)
        np.testing.assert_array_equal(np.sort(keep), np.sort(ref.numpy()))


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_jpeg_path_matches_onnxruntime(model, jpegs, precision):
    assert torchvision_ops() is not None, "the GPU path needs torchvision's decode_jpeg and batched_nms"
    torch_det, ort_det = detectors(model, None, precision=precision)
    assert torch_det.backend.cuda and torch_det.backend.precision == precision
    ours, _ = torch_det.detect_encoded(jpegs)
    ref, _ = ort_det.detect([decode_frame(j) for j in jpegs])
    # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a grey level here and there.
    check_close(
        ours,
        ref,
        torch_det.settings.conf_threshold,
        box_px=BOX_PX,
        score_tol=2e-2 if precision == "fp16" else 1e-2,
        what=f"CUDA {precision} JPEG path vs ORT",
    )


def test_detector_stage_sends_bus_jpegs_down_the_device_path(model, redis_server, redis_client, jpegs, monkeypatch):
    """The detector stage's batch (no Ray) with the path switched on, as it is for torch on CUDA with a
    JPEG bus: the bytes go to detect_encoded, not through decode_frame, and the boxes are published."""
    import pipeline.detector_service as service
    from pipeline.bus import FrameBus, ResultStore
    from pipeline.config import BusConfig, parse_args

    args = parse_args(
        {
            "cameras": [{"id": "cam", "source": "x.avi"}],
            "model": {"onnx": str(model.onnx), "backend": "onnxruntime"},
            "redis_url": redis_server.url,
            "hls": {"enabled": False},
        }
    )
    stage = service.DetectorService(args, redis_client)
    assert stage.on_device is False  # ONNX Runtime on the CPU: the host path, as before
    torch_det, ort_det = detectors(model, "cpu")
    stage.detector, stage.on_device = torch_det, True
    monkeypatch.setattr(service, "decode_frame", lambda _: pytest.fail("decoded on the host"))
    bus = FrameBus(redis_client, BusConfig(codec="jpeg"))
    images = [decode_frame(j) for j in jpegs[:2]]
    refs = [bus.put(f"cam{i}", 0, img, time.time(), 0.0) for i, img in enumerate(images)]
    codes = stage.run_batch(refs)
    stored = [bus.get_frames([r])[0][0] for r in refs]
    ref, _ = ort_det.detect([decode_frame(p) for p in stored])
    assert codes == [len(d) for d in ref] and min(codes) > 0
    results = ResultStore(redis_client)
    for i, want in enumerate(ref):
        got = results.latest(f"cam{i}")["detections"]
        boxes = np.array(sorted(d["box"] for d in got))
        np.testing.assert_allclose(boxes, np.array(sorted(want.xyxy.tolist())), atol=BOX_PX)
