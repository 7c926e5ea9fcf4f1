"""The OpenVINO backend against ONNX Runtime on the real YOLOv4-tiny model and real frames.

Same boxes within 1 px and scores within 1e-3 (batch 1 and larger, one and several streams), COCO
mAP on coco-mini within 0.2 points, `auto` picks it on this x86 box and logs why it passes it over
elsewhere, the config's errors, and `lookout bench --backend openvino,onnxruntime`.
"""

from __future__ import annotations

import json
import logging
import platform
import sys

import numpy as np
import pytest

from cli import main
from pipeline.config import ConfigError, ModelConfig, parse_args
from pipeline.detector import Detector
from pipeline.evaluate import evaluate
from pipeline.models.backends import BackendUnavailable, choose_backend, create_backend
from pipeline.models.backends.onnxruntime import OnnxRuntimeBackend
from pipeline.models.backends.openvino import OpenVinoBackend
from pipeline.models.resolve import ResolvedModel
from test_detector_model import frames as read_frames

MAX_BOX_PX = 1.0
MAX_SCORE = 1e-3
MAX_MAP_POINTS = 0.2


@pytest.fixture(scope="module")
def real_frames(assets_dir) -> list[np.ndarray]:
    """Street scenes (768x576 MPEG-4) and people walking in (H.264, another size)."""
    videos = assets_dir / "videos"
    return read_frames(videos / "vtest.avi", {0, 150, 400}) + read_frames(
        videos / "one-by-one-person-detection.mp4", {60, 600}
    )


def _detector(backend, yolo_tiny, **settings) -> Detector:
    from pipeline.models.labels import load_labels

    return Detector(backend, load_labels(yolo_tiny.names), ModelConfig(onnx="unused.onnx", **settings))


@pytest.fixture(scope="module")
def ort_detector(yolo_tiny_onnx, yolo_tiny):
    return _detector(OnnxRuntimeBackend(yolo_tiny_onnx, providers=["CPUExecutionProvider"]), yolo_tiny)


@pytest.fixture(scope="module")
def ov_detector(yolo_tiny_onnx, yolo_tiny):
    return _detector(OpenVinoBackend(yolo_tiny_onnx), yolo_tiny)


def assert_same_detections(ours, reference, where: str) -> None:
    """Every detection paired with the reference's of the same class and nearest box."""
    assert len(ours) == len(reference), f"{where}: {len(ours)} detections vs {len(reference)}"
    assert len(reference) > 0, f"{where}: no detections to compare"
    free = list(range(len(ours)))
    for k in range(len(reference)):
        same = [j for j in free if ours.class_id[j] == reference.class_id[k]]
        assert same, f"{where}: no {reference.class_id[k]} left for reference detection {k}"
        j = min(same, key=lambda j: float(np.abs(ours.xyxy[j] - reference.xyxy[k]).max()))
        free.remove(j)
        box_px = float(np.abs(ours.xyxy[j] - reference.xyxy[k]).max())
        score = abs(float(ours.confidence[j]) - float(reference.confidence[k]))
        assert box_px <= MAX_BOX_PX, f"{where}: box {ours.xyxy[j]} vs {reference.xyxy[k]} ({box_px:.3f} px)"
        assert score <= MAX_SCORE, f"{where}: score {ours.confidence[j]} vs {reference.confidence[k]}"


def test_same_boxes_as_onnxruntime_batch_1(ov_detector, ort_detector, real_frames):
    assert ov_detector.letter_box == ort_detector.letter_box is False  # both read the ONNX file's flag
    for i, frame in enumerate(real_frames):
        (ours,), _ = ov_detector.detect([frame])
        (ref,), _ = ort_detector.detect([frame])
        assert_same_detections(ours, ref, f"frame {i}")


@pytest.mark.parametrize("streams", [1, 2])
def test_same_boxes_as_onnxruntime_batched(streams, yolo_tiny_onnx, yolo_tiny, ort_detector, real_frames):
    backend = OpenVinoBackend(yolo_tiny_onnx, threads=2, streams=streams)
    assert backend.streams == streams and backend.threads == 2
    detector = _detector(backend, yolo_tiny)
    ours, _ = detector.detect(real_frames)
    refs, _ = ort_detector.detect(real_frames)
    assert len(ours) == len(real_frames)
    for i, (d, ref) in enumerate(zip(ours, refs)):
        assert_same_detections(d, ref, f"batch of {len(real_frames)}, {streams} stream(s), frame {i}")
    backend.close()


def test_raw_outputs_agree_and_stream_parts_keep_their_order(yolo_tiny_onnx, ort_detector, real_frames):
    from pipeline.models.yolo import preprocess_batch

    batch, _ = preprocess_batch(real_frames, 416, letter_box=False)
    ref_boxes, ref_scores = ort_detector.backend.infer(batch)
    backend = OpenVinoBackend(yolo_tiny_onnx, threads=2, streams=2)
    first = backend.infer(batch)
    backend.infer(batch[::-1].copy())  # the requests' buffers are reused: the first answer must not change
    for got, ref in zip(first, (ref_boxes, ref_scores)):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-2)
    backend.close()


# ----- mAP on coco-mini --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco_reports(yolo_tiny_onnx, yolo_tiny, assets_dir) -> dict[str, dict]:
    """`lookout eval`'s thresholds; both backends on the same six images (a few seconds)."""
    images, annotations = assets_dir / "coco-mini" / "images", assets_dir / "coco-mini" / "instances.json"
    settings = dict(conf_threshold=0.001, nms_iou_threshold=0.45, max_detections=100)
    backends = {
        "onnxruntime": OnnxRuntimeBackend(yolo_tiny_onnx, providers=["CPUExecutionProvider"]),
        "openvino": OpenVinoBackend(yolo_tiny_onnx),
    }
    return {
        name: evaluate(_detector(b, yolo_tiny, **settings), images, annotations, batch_size=3)
        for name, b in backends.items()
    }


def test_map_on_coco_mini_matches_onnxruntime(coco_reports):
    ov, ort = coco_reports["openvino"], coco_reports["onnxruntime"]
    assert ov["backend"].startswith("openvino") and ort["images"] == ov["images"] == 6
    assert ort["map50"] > 50, ort  # a real model on real images, not two empty results agreeing
    for key in ("map50", "map50_95"):
        assert abs(ov[key] - ort[key]) <= MAX_MAP_POINTS, (key, ov[key], ort[key])
    for name, ap in ort["per_class"].items():
        assert abs(ov["per_class"][name]["ap50"] - ap["ap50"]) <= 1.0, (name, ov["per_class"][name], ap)


# ----- auto, and what is said when it cannot run -----------------------------------------------


@pytest.fixture
def no_openvino(monkeypatch):
    """`import openvino` fails, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "openvino", None)


def test_auto_picks_openvino_on_this_x86_box(yolo_tiny_onnx, caplog):
    assert platform.machine().lower() in ("x86_64", "amd64")
    with caplog.at_level(logging.INFO, logger="pipeline.models.backends"):
        backend = create_backend(
            ModelConfig(onnx=str(yolo_tiny_onnx), backend="auto", intra_op_threads=1),
            ResolvedModel(onnx=yolo_tiny_onnx),
            4,
        )
    assert isinstance(backend, OpenVinoBackend) and backend.threads == 1
    assert "backend auto -> openvino" in caplog.text
    backend.close()


def test_auto_logs_why_it_passes_openvino_over_on_arm(monkeypatch, caplog):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with caplog.at_level(logging.INFO, logger="pipeline.models.backends"):
        assert choose_backend("auto") == "onnxruntime"
    assert "skipping openvino: not an x86 CPU (aarch64)" in caplog.text
    assert choose_backend("openvino") == "openvino"  # asked for by name it still runs there


def test_auto_without_openvino_logs_what_to_install(no_openvino, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.models.backends"):
        assert choose_backend("auto") == "onnxruntime"
    assert "skipping openvino: openvino is not installed (pip install openvino)" in caplog.text


def test_asking_for_openvino_without_it_says_what_to_install(no_openvino, yolo_tiny_onnx):
    settings = ModelConfig(onnx=str(yolo_tiny_onnx), backend="openvino")
    with pytest.raises(BackendUnavailable, match=r"backend 'openvino' cannot run here: .*pip install openvino"):
        create_backend(settings, ResolvedModel(onnx=yolo_tiny_onnx), 4)
    with pytest.raises(BackendUnavailable, match="pip install openvino"):
        OpenVinoBackend(yolo_tiny_onnx)


def test_missing_onnx_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OpenVinoBackend(tmp_path / "missing.onnx")


# ----- config -----------------------------------------------------------------------------------


def _args(**model) -> dict:
    return {"cameras": [{"id": "a", "source": "/dev/video0"}], "model": {"onnx": "m.onnx", **model}}


@pytest.mark.parametrize(
    "model, field, value",
    [
        ({"openvino": {"streams": 0}}, "model.openvino.streams", "0"),
        ({"openvino": {"streams": 65}}, "model.openvino.streams", "65"),
        ({"openvino": {"streams": "two"}}, "model.openvino.streams", "'two'"),
        ({"openvino": {"threads": 2}}, "model.openvino.threads", "2"),
        ({"openvino_streams": 0}, "model.openvino.streams", "0"),  # the old name: its value checked in its new place
        ({"intra_op_threads": -1}, "model.intra_op_threads", "-1"),
        ({"backend": "openvin"}, "model.backend", "'openvin'"),
        ({"openvino_threads": 2}, "model.openvino_threads", "2"),
    ],
)
def test_bad_values_name_field_and_value(model, field, value):
    with pytest.raises(ConfigError) as info:
        parse_args(_args(**model))
    assert f"{field}:" in str(info.value) and f"(got {value})" in str(info.value)


def test_threads_and_streams_reach_openvino(yolo_tiny_onnx):
    settings = parse_args(
        _args(onnx=str(yolo_tiny_onnx), backend="openvino", intra_op_threads=2, openvino={"streams": 2})
    ).model
    backend = create_backend(settings, ResolvedModel(onnx=yolo_tiny_onnx), 4)
    assert isinstance(backend, OpenVinoBackend)
    assert backend.threads == 2 and backend.streams == 2 and "2 thread(s)" in backend.describe()
    backend.close()


def test_the_old_name_of_openvino_streams_still_works_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.config.model"):
        assert parse_args(_args(openvino_streams=3)).model.openvino.streams == 3
    assert "model.openvino_streams is the old name of model.openvino.streams" in caplog.text
    assert (
        ModelConfig(onnx="m.onnx", openvino_streams=2).openvino
        == ModelConfig(onnx="m.onnx", openvino={"streams": 2}).openvino
    )
    with pytest.raises(ConfigError, match="model.openvino_streams and model.openvino.streams both given"):
        parse_args(_args(openvino_streams=2, openvino={"streams": 3}))


# ----- lookout bench --backend openvino,onnxruntime ------------------------------------------------


def test_bench_prints_both_backends_side_by_side(capsys, yolo_tiny_onnx, assets_dir):
    rc = main(
        [
            "bench",
            "--backend",
            "openvino,onnxruntime",
            "--onnx",
            str(yolo_tiny_onnx),
            "--frames",
            "4",
            "--batch",
            "1,2",
            "--bare-threads",
            "1",
            "--clip",
            str(assets_dir / "videos" / "vtest.avi"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["backends"] == ["openvino", "onnxruntime"]
    assert [(r["threads"], r["batch"]) for r in report["rows"]] == [(1, 1), (1, 2)]
    for r in report["rows"]:
        assert r["openvino"]["describe"].startswith("openvino") and "1 thread(s)" in r["openvino"]["describe"]
        assert r["onnxruntime"]["describe"].startswith("onnxruntime")
        for name in ("openvino", "onnxruntime"):
            assert r[name]["infer_ms_per_frame"] > 0 and r[name]["fps"] > 0
    header = next(line for line in out.splitlines() if line.lstrip().startswith("threads batch"))
    assert header.split() == [
        "threads",
        "batch",
        "openvino",
        "ms",
        "openvino",
        "fps",
        "onnxruntime",
        "ms",
        "onnxruntime",
        "fps",
        "openvino",
        "ms",
        "/",
        "onnxruntime",
        "ms",
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backend", "openvino,onnxrt"], "--backend: unknown backend 'onnxrt'"),
        (["--backend", "openvino,openvino"], "--backend: a backend appears twice"),
        (["--backend", "openvino,onnxruntime", "--bare-threads", "1,x"], "--bare-threads: expected comma-separated"),
    ],
)
def test_bench_bad_arguments_are_named(capsys, argv, message):
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err
