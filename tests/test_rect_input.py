"""A rectangular network input (model.input_height_px): converter, fit, backends, INT8, copy path, config."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from hls.copy_args import detect_size
from pipeline.config import ModelConfig, PipelineArgs
from pipeline.detector import Detector
from pipeline.models.onnx_export import convert, ensure_onnx, load_graph_info
from pipeline.models.quantize import ensure_int8
from pipeline.models.resolve import resolve_model
from pipeline.models.yolo import fit_input, preprocess_batch
from pipeline.tracking import pair_same_class

SHAPE = (416, 320)  # 4:3 cameras: 768x576 scaled to 416x312 fits with 8 rows to spare


def video_frames(assets_dir: Path, name: str, indexes: list[int]) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(assets_dir / "videos" / name))
    out = []
    for i in indexes:
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, frame = cap.read()
        assert ok, f"cannot read frame {i} of {name}"
        out.append(frame)
    cap.release()
    return out


@pytest.fixture(scope="module")
def rect_onnx(yolo_tiny, tmp_path_factory) -> Path:
    return convert(yolo_tiny.cfg, yolo_tiny.weights, tmp_path_factory.mktemp("rect") / "tiny-416x320.onnx", SHAPE)


def test_rect_model_matches_opencvs_darknet_reader(yolo_tiny, assets_dir, tmp_path):
    """OpenCV's own darknet importer run at 416x320 is the reference (batch-norm eps as it folds it)."""
    model = convert(yolo_tiny.cfg, yolo_tiny.weights, tmp_path / "eps6.onnx", SHAPE, bn_eps=1e-6)
    frame = video_frames(assets_dir, "vtest.avi", [120])[0]
    rgb = cv2.cvtColor(cv2.resize(frame, SHAPE, interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)
    net = cv2.dnn.readNetFromDarknet(str(yolo_tiny.cfg), str(yolo_tiny.weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(x)
    names = sorted(net.getUnconnectedOutLayersNames(), key=lambda n: int(n.rsplit("_", 1)[1]))
    ref = np.concatenate(net.forward(names), axis=0)
    assert ref.shape == (3 * (13 * 10 + 26 * 20), 85)  # the grids are 13x10 and 26x20 cells

    boxes, scores = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        ["boxes", "scores"], {"images": x}
    )
    boxes, scores = boxes[0], scores[0]
    ours = np.stack(
        [
            (boxes[:, 0] + boxes[:, 2]) / 2,
            (boxes[:, 1] + boxes[:, 3]) / 2,
            boxes[:, 2] - boxes[:, 0],
            boxes[:, 3] - boxes[:, 1],
        ],
        1,
    )
    theirs = ref[:, :4] * np.array([SHAPE[0], SHAPE[1], SHAPE[0], SHAPE[1]], np.float32)  # x by width, y by height
    assert np.abs(ours - theirs).max() < 5e-3
    kept = ref[:, 5:] > 0  # OpenCV zeroes class scores <= 0.2
    assert kept.sum() > 0 and scores[:, 0].max() > 0.5  # people found
    assert np.abs(scores - ref[:, 5:])[kept].max() < 2e-5
    assert scores[~kept].max() <= 0.2 + 2e-5


def test_metadata_and_rebuild_when_the_height_changes(yolo_tiny, rect_onnx, tmp_path):
    info = load_graph_info(rect_onnx)
    assert (info["input_size"], info["input_height"], info["num_boxes"]) == (416, 320, 3 * (13 * 10 + 26 * 20))
    dims = [d.dim_value or d.dim_param for d in onnx.load(str(rect_onnx)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, 320, 416]

    out = tmp_path / "m.onnx"
    ensure_onnx(yolo_tiny.cfg, yolo_tiny.weights, out, SHAPE)
    first = out.stat().st_mtime_ns
    ensure_onnx(yolo_tiny.cfg, yolo_tiny.weights, out, SHAPE)
    assert out.stat().st_mtime_ns == first  # up to date: not converted again
    ensure_onnx(yolo_tiny.cfg, yolo_tiny.weights, out, (416, 256))
    assert load_graph_info(out)["input_height"] == 256
    ensure_onnx(yolo_tiny.cfg, yolo_tiny.weights, out, 416)
    assert (load_graph_info(out)["input_size"], load_graph_info(out)["input_height"]) == (416, 416)


@pytest.mark.parametrize("bad", [(416, 330), (416,), (0, 320), (416, 320, 3), "416x320"])
def test_bad_shapes_are_refused_with_the_value(yolo_tiny, tmp_path, bad):
    with pytest.raises(ValueError, match="input_size"):
        convert(yolo_tiny.cfg, yolo_tiny.weights, tmp_path / "x.onnx", bad)


def test_fit_and_batch_take_width_and_height():
    stretch = fit_input(768, 576, SHAPE, letter_box=False)
    assert (stretch.resized_width_px, stretch.resized_height_px) == SHAPE
    box = fit_input(768, 576, SHAPE, letter_box=True)  # limited by the width: 416 / 768
    assert (box.resized_width_px, box.resized_height_px, box.pad_x_px, box.pad_y_px) == (416, 312, 0, 4)
    tall = fit_input(576, 768, SHAPE, letter_box=True)  # limited by the height: 320 / 768
    assert (tall.resized_width_px, tall.resized_height_px, tall.pad_x_px, tall.pad_y_px) == (240, 320, 88, 0)
    batch, fits = preprocess_batch(
        [np.zeros((576, 768, 3), np.uint8), np.zeros((312, 416, 3), np.uint8)], SHAPE, letter_box=False
    )
    assert batch.shape == (2, 3, 320, 416) and fits[1].scale_x == 1.0 and fits[1].scale_y == 320 / 312


def test_camera_frames_fit_inside_the_rectangle():
    assert detect_size((768, 576), SHAPE) == (416, 312)
    assert detect_size((1920, 1080), (416, 256)) == (416, 234)
    assert detect_size((576, 768), SHAPE) == (240, 320)  # a portrait camera: limited by the height
    assert detect_size((768, 576), 416) == (416, 312)  # a square input, as before


@pytest.fixture(scope="module")
def detectors(rect_onnx, yolo_tiny_onnx, yolo_tiny):
    def make(onnx_path, backend):
        return Detector.from_config(ModelConfig(onnx=str(onnx_path), backend=backend), onnx_path, yolo_tiny.names)

    return {
        "square": make(yolo_tiny_onnx, "onnxruntime"),
        "onnxruntime": make(rect_onnx, "onnxruntime"),
        "openvino": make(rect_onnx, "openvino"),
    }


def test_both_cpu_backends_run_it_and_agree(detectors, assets_dir):
    frames = video_frames(assets_dir, "vtest.avi", [0, 100, 200, 300])
    ort_dets, _ = detectors["onnxruntime"].detect(frames)
    ov_dets, _ = detectors["openvino"].detect(frames)
    for backend in ("onnxruntime", "openvino"):
        assert detectors[backend].input_shape_px == SHAPE and detectors[backend].input_size_px == 416
    for a, b in zip(ort_dets, ov_dets):
        assert len(a) == len(b) and (a.class_id == 0).sum() >= 3  # people, in every frame
        pairs = pair_same_class(b, a)
        assert len(pairs) == len(a)
        i, j = np.array(pairs).T
        assert np.abs(b.xyxy[i] - a.xyxy[j]).max() < 1.0
        assert a.xyxy[:, [2]].max() <= 768 and a.xyxy[:, [3]].max() <= 576  # in the source's pixels


def test_boxes_land_where_the_square_models_do(detectors, assets_dir):
    """The same people at the same places in the source's pixels; measured on 40 frames of vtest.avi, 416x320
    paired 88 % of the square model's detections (docs/benchmarks.md, "Rectangular network input")."""
    frames = video_frames(assets_dir, "vtest.avi", list(range(0, 795, 53)))
    square, _ = detectors["square"].detect(frames)
    rect, _ = detectors["onnxruntime"].detect(frames)
    paired = sum(len(pair_same_class(r, s)) for r, s in zip(rect, square))
    total = sum(len(s) for s in square)
    assert total > 50 and paired / total >= 0.75, (paired, total)


def test_int8_quantizes_the_rect_model(rect_onnx, assets_dir, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, frame in enumerate(video_frames(assets_dir, "vtest.avi", list(range(0, 720, 90)))):
        cv2.imwrite(str(calib / f"{i:02d}.jpg"), frame)
    q = ensure_int8(rect_onnx, calib, tmp_path / "cache")
    dims = [d.dim_value for d in onnx.load(str(q.path)).graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, 320, 416] and q.agreement >= 0.95


def test_config_field_errors_and_plumbing(tmp_path):
    assert ModelConfig(onnx="m.onnx").input_shape_px == (416, 416)
    assert ModelConfig(onnx="m.onnx", input_height_px=256).input_shape_px == (416, 256)
    with pytest.raises(ValidationError, match="input_height_px") as err:
        ModelConfig(onnx="m.onnx", input_height_px=330)
    assert "330" in str(err.value)
    with pytest.raises(ValidationError, match="input_height_px=320: the tensorrt backend takes square"):
        ModelConfig(onnx="m.onnx", backend="tensorrt", input_height_px=320)
    args = PipelineArgs.model_validate(
        {
            "cameras": [{"id": "a", "source": "rtsp://cam/a"}],
            "base_dir": str(tmp_path),
            "model": {"onnx": "m.onnx", "input_height_px": 320},
        }
    )
    group = args.for_group(["a"])
    assert (group.detect_input_px, group.detect_input_height_px) == (416, 320)


def test_resolve_builds_a_file_named_by_its_shape(yolo_tiny, tmp_path):
    for f in (yolo_tiny.cfg, yolo_tiny.weights):
        os.symlink(f, tmp_path / Path(f).name)
    args = PipelineArgs.model_validate(
        {
            "cameras": [{"id": "a", "source": "rtsp://cam/a"}],
            "base_dir": str(tmp_path),
            "model": {"cfg": Path(yolo_tiny.cfg).name, "weights": Path(yolo_tiny.weights).name, "input_height_px": 320},
        }
    )
    resolved = resolve_model(args.model, args)
    assert resolved.onnx == tmp_path / "yolov4-tiny-416x320.onnx"
    assert load_graph_info(resolved.onnx)["input_height"] == 320


def test_tensorrt_refuses_it_by_name(rect_onnx):
    from pipeline.models.backends.tensorrt import onnx_input
    from pipeline.models.darknet import ModelFileError

    with pytest.raises(ModelFileError, match="square inputs only, this one is 416x320"):
        onnx_input(rect_onnx)


def test_capacity_bench_converts_the_app_modes_model(yolo_tiny_onnx):
    from tools.capacity_bench import app_onnx

    a = argparse.Namespace(onnx=str(yolo_tiny_onnx), input_height=None)
    assert app_onnx(a) == str(yolo_tiny_onnx)
    a.input_height = 320
    path = Path(app_onnx(a))
    assert path.name == "yolov4-tiny-416x320.onnx" and load_graph_info(path)["input_height"] == 320


def test_bench_sizes_prints_every_model_side_by_side(capsys, yolo_tiny_onnx):
    """A smoke run of `lookout bench sizes` (2 frames a video, one round): real models, real frames."""
    import json

    from cli import main

    assert (
        main(
            [
                "bench",
                "sizes",
                "--onnx",
                str(yolo_tiny_onnx),
                "--sizes",
                "416,416x320",
                "--frames",
                "2",
                "--rounds",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert [r["model"] for r in report["rows"]] == ["416x416 fp32", "416x320 fp32"]
    first, rect = report["rows"]
    assert first["agreement"]["vtest.avi"][0] == first["agreement"]["vtest.avi"][1] > 0  # itself: all found
    assert rect["ms_per_frame"] > 0 and 0 < rect["map50"] <= 100
    assert main(["bench", "sizes", "--onnx", str(yolo_tiny_onnx), "--sizes", "416y320"]) == 2
    assert "--sizes: '416y320' is not a side or WIDTHxHEIGHT" in capsys.readouterr().err
