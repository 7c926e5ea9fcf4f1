"""Our darknet → ONNX conversion run in onnxruntime against OpenCV's own darknet importer.

OpenCV (4.x `cv2.dnn.readNetFromDarknet`) is an independent implementation. Its [yolo]
layers ("Region" layers) output one row per cell and anchor, cells row by row with the
anchors of a cell adjacent, as [cx, cy, w, h (0..1 of the input), objectness, class scores].
Two documented OpenCV behaviours are accounted for:

- class scores are objectness * sigmoid(class) but set to 0 unless > 0.2 (RegionLayer's
  default `thresh`, which the darknet importer does not override). Where OpenCV reports 0 we
  check that our score is <= 0.2; elsewhere the values must agree.
- OpenCV folds batch-norm with eps 1e-6 (`x / sqrt(var + 1e-6)`), darknet uses 1e-5
  (`sqrt(var + .00001f)`, also in its fuse_conv_batchnorm). Our default follows darknet, so
  for real weights the exact comparison is done with `bn_eps=1e-6` and the default is checked
  with a slightly wider tolerance.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pipeline.models import darknet, onnx_export
from pipeline.models.darknet import ConvParams
from pipeline.models.onnx_export import convert, ensure_onnx, load_graph_info, sha256_file

OPENCV_THRESH = 0.2


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def to_tensor(bgr: np.ndarray, size: int) -> np.ndarray:
    """A plain resize to size x size, RGB, 0..1, NCHW: the exact tensor both runtimes get."""
    rgb = cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)


def video_frame(assets_dir: Path, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(assets_dir / "videos" / "vtest.avi"))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
    finally:
        cap.release()
    assert ok, "cannot read vtest.avi"
    return frame


def coco_image(assets_dir: Path, name: str = "000000444010.jpg") -> np.ndarray:
    img = cv2.imread(str(assets_dir / "coco-mini" / "images" / name))
    assert img is not None
    return img


def opencv_forward(cfg: Path, weights: Path, x: np.ndarray) -> np.ndarray:
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.setInput(x)
    names = sorted(net.getUnconnectedOutLayersNames(), key=lambda n: int(n.rsplit("_", 1)[1]))
    return np.concatenate(net.forward(names), axis=0)


def compare(boxes: np.ndarray, scores: np.ndarray, ref: np.ndarray, size: int) -> dict[str, float]:
    """Agreement of our batch-1 outputs with OpenCV's rows; box differences in input pixels."""
    assert boxes.shape[0] == scores.shape[0] == ref.shape[0]
    ours = np.stack(
        [
            (boxes[:, 0] + boxes[:, 2]) / 2,
            (boxes[:, 1] + boxes[:, 3]) / 2,
            boxes[:, 2] - boxes[:, 0],
            boxes[:, 3] - boxes[:, 1],
        ],
        1,
    )
    theirs = ref[:, :4] * size
    box_diff = np.abs(ours - theirs)
    cls = ref[:, 5:]
    kept = cls > 0
    return {
        "box_max_px": float(box_diff.max()),
        "box_rel_wh": float((box_diff[:, 2:] / theirs[:, 2:]).max()),
        "score_max": float(np.abs(scores - cls)[kept].max()) if kept.any() else 0.0,
        "ours_where_cv_zero": float(scores[~kept].max()) if (~kept).any() else 0.0,
        "ours_where_cv_kept": float(scores[kept].min()) if kept.any() else 1.0,
        "kept": int(kept.sum()),
        "total": int(cls.size),
    }


def assert_agrees(m: dict[str, float], box_px: float, score: float) -> None:
    assert m["box_max_px"] < box_px, m
    assert m["score_max"] < score, m
    assert m["ours_where_cv_zero"] <= OPENCV_THRESH + score, m
    assert m["ours_where_cv_kept"] > OPENCV_THRESH - score, m


def random_weights(cfg_path: Path, out: Path, seed: int = 0) -> Path:
    """Generated parameters that keep activations O(1) through the whole network."""
    cfg = darknet.parse_cfg(cfg_path)
    rng = np.random.default_rng(seed)
    layers = {}
    for index, bn, shape in darknet.param_layout(cfg):
        filters, fan_in = shape[0], math.prod(shape[1:])
        std = (1.0 if bn else 1.5) / math.sqrt(fan_in)
        w = rng.normal(0.0, std, shape).astype(np.float32)
        if bn:
            layers[index] = ConvParams(
                rng.normal(0, 0.1, filters),
                w,
                rng.uniform(0.5, 1.0, filters),
                rng.normal(0, 0.1, filters),
                rng.uniform(0.5, 1.5, filters),
            )
        else:
            layers[index] = ConvParams(rng.normal(0, 0.3, filters), w)
    return darknet.write_weights(out, cfg, layers)


# ----------------------------------------------------------------------------- yolov4-tiny, real weights


@pytest.fixture(scope="module")
def tiny_exact_onnx(yolo_tiny, tmp_path_factory) -> Path:
    """yolov4-tiny converted with OpenCV's batch-norm eps, for the bit-for-bit-ish comparison."""
    return convert(
        yolo_tiny.cfg, yolo_tiny.weights, tmp_path_factory.mktemp("tiny") / "tiny-eps6.onnx", 416, bn_eps=1e-6
    )


@pytest.mark.parametrize("source", ["vtest", "coco"])
def test_yolov4_tiny_real_weights_match_opencv(yolo_tiny, yolo_tiny_onnx, tiny_exact_onnx, assets_dir, source):
    bgr = video_frame(assets_dir, 120) if source == "vtest" else coco_image(assets_dir)
    x = to_tensor(bgr, 416)
    ref = opencv_forward(yolo_tiny.cfg, yolo_tiny.weights, x)
    assert ref.shape == (13 * 13 * 3 + 26 * 26 * 3, 85)

    boxes, scores = session(tiny_exact_onnx).run(["boxes", "scores"], {"images": x})
    assert boxes.shape == (1, 2535, 4) and scores.shape == (1, 2535, 80)
    exact = compare(boxes[0], scores[0], ref, 416)
    print(f"\n{source} bn_eps=1e-6 vs OpenCV: {exact}")
    assert_agrees(exact, box_px=5e-3, score=2e-5)

    boxes, scores = session(yolo_tiny_onnx).run(["boxes", "scores"], {"images": x})
    default = compare(boxes[0], scores[0], ref, 416)
    print(f"{source} darknet bn_eps=1e-5 vs OpenCV: {default}")
    assert_agrees(default, box_px=5e-2, score=5e-4)

    # real detections, not just agreement: vtest is full of pedestrians (COCO class 0)
    assert exact["kept"] > 0
    if source == "vtest":
        assert scores[0, :, 0].max() > 0.5


# ----------------------------------------------------------------------------- full yolov4, generated weights


@pytest.fixture(scope="module")
def yolov4_generated(assets_dir, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("yolov4")
    cfg = folder / "yolov4.cfg"
    shutil.copyfile(assets_dir / "models" / "yolov4.cfg", cfg)
    return cfg, random_weights(cfg, folder / "yolov4-random.weights")


@pytest.mark.slow
def test_full_yolov4_generated_weights_match_opencv(yolov4_generated, assets_dir, tmp_path):
    cfg, weights = yolov4_generated
    size = 320  # the cfg says 640: --size overrides it
    model = convert(cfg, weights, tmp_path / "yolov4-320.onnx", size)
    info = load_graph_info(model)
    assert info["input_size"] == size and info["num_classes"] == 80
    assert info["num_boxes"] == 3 * (40**2 + 20**2 + 10**2)
    x = to_tensor(coco_image(assets_dir, "000000565004.jpg"), size)
    boxes, scores = session(model).run(["boxes", "scores"], {"images": x})
    ref = opencv_forward(cfg, weights, x)
    m = compare(boxes[0], scores[0], ref, size)
    print(f"\nyolov4 (generated weights) at {size} vs OpenCV: {m}")
    assert 0.01 * m["total"] < m["kept"] < 0.99 * m["total"], "generated weights should straddle OpenCV's 0.2"
    assert ref[:, 4].std() > 0.02, "objectness should vary"
    assert_agrees(m, box_px=5e-3, score=2e-5)


# ----------------------------------------------------------------------------- all layer variants, small net

ZOO_CFG = """\
[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=mish

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
groups=2
activation=logistic

[shortcut]
from=-2
activation=linear

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=linear

[maxpool]
stride=1
size=5

[route]
layers=-1,-2,5

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask = 3,4,5
anchors = 5,6, 8,9, 10,12, 12,10, 20,24, 30,20
classes=2
num=6
scale_x_y = 1.2

[route]
layers = -3

[upsample]
stride=2

[route]
layers = -1, 2

[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear

[yolo]
mask = 0,1,2
anchors = 5,6, 8,9, 10,12, 12,10, 20,24, 30,20
classes=2
num=6
"""


def test_layer_zoo_matches_opencv(tmp_path, assets_dir):
    cfg = tmp_path / "zoo.cfg"
    cfg.write_text(ZOO_CFG)
    weights = random_weights(cfg, tmp_path / "zoo.weights", seed=3)
    model = convert(cfg, weights, tmp_path / "zoo.onnx", 64)
    x = to_tensor(video_frame(assets_dir, 10), 64)
    boxes, scores = session(model).run(["boxes", "scores"], {"images": x})
    assert boxes.shape == (1, 3 * (16 * 16 + 32 * 32), 4) and scores.shape == (1, 3 * (16 * 16 + 32 * 32), 2)
    ref = opencv_forward(cfg, weights, x)
    m = compare(boxes[0], scores[0], ref, 64)
    print(f"\nlayer zoo vs OpenCV: {m}")
    assert_agrees(m, box_px=5e-3, score=2e-5)


# ----------------------------------------------------------------------------- graph contract


def test_graph_contract_and_metadata(yolo_tiny, yolo_tiny_onnx):
    model = onnx.load(str(yolo_tiny_onnx))
    (inp,) = model.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 416, 416]
    assert [o.name for o in model.graph.output] == ["boxes", "scores"]
    assert model.opset_import[0].version >= 13
    info = load_graph_info(yolo_tiny_onnx)
    assert info["input_size"] == 416 and info["num_classes"] == 80 and info["num_boxes"] == 2535
    assert info["model_name"] == "yolov4-tiny"
    assert info["cfg_sha256"] == sha256_file(yolo_tiny.cfg)
    assert info["weights_sha256"] == "cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87"
    assert info["inputs"] == ["images"] and info["outputs"] == ["boxes", "scores"]
    assert info["letter_box"] is False  # yolov4-tiny.cfg has no letter_box: darknet stretches


# ----------------------------------------------------------------------------- letter_box: stretch like darknet


def opencv_people(cfg: Path, weights: Path, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """People (xyxy in image pixels, confidence) as OpenCV's darknet reader finds them: the image
    stretched to 416 x 416 (blobFromImage, as darknet does for a cfg without letter_box=1), class
    scores from its Region layers, cv2's own NMS at 0.45."""
    h, w = bgr.shape[:2]
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(cv2.dnn.blobFromImage(bgr, 1 / 255, (416, 416), swapRB=True, crop=False))
    rows = np.concatenate(net.forward(net.getUnconnectedOutLayersNames()))
    conf = rows[:, 5]  # person; 0 unless > 0.2
    keep = conf > OPENCV_THRESH
    cxcywh = rows[keep, :4] * [w, h, w, h]
    xywh = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, 2:]], 1)
    idx = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), conf[keep].tolist(), OPENCV_THRESH, 0.45), int).reshape(-1)
    return np.concatenate([xywh[idx, :2], xywh[idx, :2] + xywh[idx, 2:]], 1), conf[keep][idx]


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), 1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], -1)  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def test_detector_finds_the_people_opencv_finds(yolo_tiny, yolo_tiny_onnx, assets_dir):
    """Every person OpenCV's darknet reader finds with > 0.5, Lookout's detector finds at the same
    place with the same confidence: yolov4-tiny.cfg has no letter_box, so frames are stretched, not
    letterboxed. Letterboxed, the person right of the vtest frame 150 scored 0.22 (OpenCV 0.81) and
    the one on the left of frame 350 was missed altogether (OpenCV 0.74)."""
    from pipeline.config import ModelConfig
    from pipeline.detector import Detector

    det = Detector.from_config(
        ModelConfig(onnx=str(yolo_tiny_onnx), backend="onnxruntime", conf_threshold=0.2, classes=["person"]),
        yolo_tiny_onnx,
        yolo_tiny.names,
    )
    images = {f"vtest {i}": video_frame(assets_dir, i) for i in (0, 150, 200, 250, 350)}
    images.update(
        {name: coco_image(assets_dir, name) for name in ("000000444010.jpg", "000000475546.jpg", "000000547503.jpg")}
    )
    checked, worst = 0, 0.0
    for name, bgr in images.items():
        ref_boxes, ref_conf = opencv_people(yolo_tiny.cfg, yolo_tiny.weights, bgr)
        ours = det.detect([bgr])[0][0]
        for box, conf in zip(ref_boxes, ref_conf):
            if conf <= 0.5:
                continue
            match = iou(box, ours.xyxy) if len(ours) else np.zeros(0)
            assert len(match) and match.max() > 0.95, (
                f"{name}: OpenCV's person {box.round(1)} ({conf:.2f}) "
                f"not found; ours: {ours.xyxy.round(1).tolist()} {ours.confidence.round(2).tolist()}"
            )
            j = int(match.argmax())
            worst = max(worst, abs(float(ours.confidence[j]) - float(conf)))
            assert ours.confidence[j] == pytest.approx(conf, abs=0.02), (name, box.round(1))
            checked += 1
    print(f"\n{checked} people OpenCV finds with > 0.5, all found; worst confidence difference {worst:.4f}")
    assert checked >= 20


def test_letter_box_flag_travels_from_the_cfg_into_the_onnx_and_the_detector(yolo_tiny, tmp_path, assets_dir):
    from pipeline.config import ModelConfig
    from pipeline.detector import Detector

    cfg = tmp_path / "tiny-lb.cfg"
    cfg.write_text(yolo_tiny.cfg.read_text().replace("[net]\n", "[net]\nletter_box=1\n", 1))
    assert darknet.parse_cfg(cfg).letter_box and not darknet.parse_cfg(yolo_tiny.cfg).letter_box
    onnx_lb = convert(cfg, yolo_tiny.weights, tmp_path / "lb.onnx", 416)
    assert load_graph_info(onnx_lb)["letter_box"] is True
    frame = video_frame(assets_dir, 150)

    def fits(onnx_path: Path, setting="auto"):
        d = Detector.from_config(
            ModelConfig(onnx=str(onnx_path), backend="onnxruntime", letter_box=setting), onnx_path, yolo_tiny.names
        )
        return d.letter_box, d.detect([frame])[0][0]

    lb, with_lb = fits(onnx_lb)
    assert lb is True
    assert fits(onnx_lb, False)[0] is False  # model.letter_box overrides the model
    # a user's ONNX without the metadata: darknet's default, stretch
    bare = onnx.load(str(onnx_lb))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    assert load_graph_info(tmp_path / "bare.onnx")["letter_box"] is None
    stretched, plain = fits(tmp_path / "bare.onnx")
    assert stretched is False and fits(tmp_path / "bare.onnx", True)[0] is True
    # the same weights, fitted two ways: different inputs, so different detections
    assert len(with_lb) != len(plain) or not np.allclose(with_lb.confidence, plain.confidence, atol=1e-3)
    bad = onnx.load(str(onnx_lb))
    for prop in bad.metadata_props:
        if prop.key == "lookout.letter_box":
            prop.value = "yes"
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    with pytest.raises(darknet.ModelFileError, match=r"lookout.letter_box='yes' must be '0' or '1'"):
        load_graph_info(tmp_path / "bad.onnx")
    cfg.write_text(yolo_tiny.cfg.read_text().replace("[net]\n", "[net]\nletter_box=2\n", 1))
    with pytest.raises(darknet.ModelFileError, match=r"tiny-lb.cfg:1 \[net\]: option 'letter_box' must be 0 or 1"):
        convert(cfg, yolo_tiny.weights, tmp_path / "x.onnx", 416)


def test_load_graph_info_errors(tmp_path):
    with pytest.raises(darknet.ModelFileError, match=f"ONNX model {tmp_path / 'none.onnx'} does not exist"):
        load_graph_info(tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(darknet.ModelFileError, match="bad.onnx cannot be read"):
        load_graph_info(tmp_path / "bad.onnx")


def test_dynamic_batch_gives_per_image_results(yolo_tiny_onnx, assets_dir):
    images = [
        to_tensor(video_frame(assets_dir, 40), 416),
        to_tensor(coco_image(assets_dir), 416),
        to_tensor(coco_image(assets_dir, "000000471345.jpg"), 416),
    ]
    sess = session(yolo_tiny_onnx)
    boxes3, scores3 = sess.run(None, {"images": np.concatenate(images)})
    assert boxes3.shape == (3, 2535, 4) and scores3.shape == (3, 2535, 80)
    for i, x in enumerate(images):
        boxes1, scores1 = sess.run(None, {"images": x})
        np.testing.assert_allclose(boxes3[i], boxes1[0], atol=1e-3, rtol=1e-5)
        np.testing.assert_allclose(scores3[i], scores1[0], atol=1e-5)
    assert not np.allclose(scores3[0], scores3[1])


def test_convert_is_fast_and_checks_arguments(yolo_tiny, tmp_path):
    started = time.perf_counter()
    convert(yolo_tiny.cfg, yolo_tiny.weights, tmp_path / "t.onnx", 608)
    elapsed = time.perf_counter() - started
    print(f"\nyolov4-tiny conversion took {elapsed:.2f}s")
    assert elapsed < 5.0
    assert load_graph_info(tmp_path / "t.onnx")["input_size"] == 608
    with pytest.raises(ValueError, match=r"input_size must be a positive multiple of 32, got 400"):
        convert(yolo_tiny.cfg, yolo_tiny.weights, tmp_path / "x.onnx", 400)
    with pytest.raises(ValueError, match=r"opset must be an integer in 13\.\.\d+, got 11"):
        convert(yolo_tiny.cfg, yolo_tiny.weights, tmp_path / "x.onnx", 416, opset=11)
    with pytest.raises(darknet.ModelFileError, match="lookout fetch-weights"):
        convert(yolo_tiny.cfg, tmp_path / "missing.weights", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_newer_opset_gives_the_same_outputs(yolo_tiny, yolo_tiny_onnx, tmp_path, assets_dir):
    model = convert(yolo_tiny.cfg, yolo_tiny.weights, tmp_path / "t17.onnx", 416, opset=17)
    assert load_graph_info(model)["opset"] == 17
    x = to_tensor(coco_image(assets_dir), 416)
    a = session(yolo_tiny_onnx).run(None, {"images": x})
    b = session(model).run(None, {"images": x})
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, atol=1e-4)


def test_ensure_onnx_rebuilds_only_when_sources_change(yolo_tiny, tmp_path, monkeypatch):
    cfg = tmp_path / "yolov4-tiny.cfg"
    weights = tmp_path / "yolov4-tiny.weights"
    shutil.copyfile(yolo_tiny.cfg, cfg)
    shutil.copyfile(yolo_tiny.weights, weights)
    out = tmp_path / "models" / "tiny.onnx"
    calls = []
    real_convert = onnx_export.convert

    def counting_convert(*args, **kwargs):
        calls.append(args)
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "convert", counting_convert)
    assert ensure_onnx(cfg, weights, out, 416) == out and len(calls) == 1
    first_sha = load_graph_info(out)["weights_sha256"]
    ensure_onnx(cfg, weights, out, 416)
    assert len(calls) == 1, "unchanged sources must not rebuild"

    parsed = darknet.parse_cfg(cfg)
    params = darknet.read_weights(weights, parsed)
    params.layers[0].biases = params.layers[0].biases + np.float32(0.5)
    darknet.write_weights(weights, parsed, params.layers, seen=params.seen)
    ensure_onnx(cfg, weights, out, 416)
    assert len(calls) == 2
    assert load_graph_info(out)["weights_sha256"] == sha256_file(weights) != first_sha

    ensure_onnx(cfg, weights, out, 320)
    assert len(calls) == 3 and load_graph_info(out)["input_size"] == 320

    out.write_bytes(b"not an onnx file")
    ensure_onnx(cfg, weights, out, 320)
    assert len(calls) == 4 and load_graph_info(out)["input_size"] == 320
    assert not list(out.parent.glob("*.tmp"))
