"""The torch backend against ONNX Runtime on our ONNX export: same boxes, scores and mAP.

CPU tests run wherever torch is installed; `gpu` tests need CUDA (skipped without an NVIDIA GPU).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (the torch backend is optional: pip install torch)")

from test_convert_vs_opencv import ZOO_CFG, coco_image, random_weights, video_frame  # noqa: E402

from pipeline.config import ModelConfig  # noqa: E402
from pipeline.detector import Detector  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.models.backends import BackendUnavailable, create_backend  # noqa: E402
from pipeline.models.backends.torch_cuda import TorchBackend  # noqa: E402
from pipeline.models.darknet import ModelFileError  # noqa: E402
from pipeline.models.labels import load_labels  # noqa: E402
from pipeline.models.onnx_export import convert  # noqa: E402
from pipeline.models.resolve import ResolvedModel  # noqa: E402
from pipeline.models.torch_yolo import DarknetYolo, from_darknet, from_onnx  # noqa: E402
from pipeline.models.yolo import fit_image, preprocess_batch  # noqa: E402

# fp32 agreement with ONNX Runtime on the same float32 input (measured: boxes 1.2e-4 px, scores 1.1e-6).
BOX_ATOL_PX, SCORE_ATOL = 2e-3, 2e-5
HAS_CUDA = torch.cuda.is_available()


def ort_run(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(["boxes", "scores"], {"images": x})
    return boxes, scores


def torch_run(net: DarknetYolo, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        boxes, scores = net.eval()(torch.from_numpy(x))
    return boxes.numpy(), scores.numpy()


def assert_close(ours, ref, box_atol=BOX_ATOL_PX, score_atol=SCORE_ATOL, what=""):
    (b, s), (rb, rs) = ours, ref
    assert b.shape == rb.shape and s.shape == rs.shape, (b.shape, rb.shape, s.shape, rs.shape)
    assert b.dtype == s.dtype == np.float32
    box_err, score_err = float(np.abs(b - rb).max()), float(np.abs(s - rs).max())
    print(f"\n{what}: max |box diff| {box_err:.2e} px, max |score diff| {score_err:.2e}")
    assert box_err < box_atol and score_err < score_atol, (box_err, score_err)


@pytest.fixture(scope="module")
def tiny_net(yolo_tiny) -> DarknetYolo:
    return from_darknet(yolo_tiny.cfg, yolo_tiny.weights, 416).eval()


@pytest.fixture(scope="module")
def cpu_backend(yolo_tiny, yolo_tiny_onnx) -> TorchBackend:
    model = ResolvedModel(onnx=yolo_tiny_onnx, cfg=yolo_tiny.cfg, weights=yolo_tiny.weights, labels=yolo_tiny.names)
    return TorchBackend.from_model(model, ModelConfig(onnx=str(yolo_tiny_onnx), backend="torch"), 4, device="cpu")


def mixed_images(assets_dir: Path) -> list[np.ndarray]:
    return [video_frame(assets_dir, 120), coco_image(assets_dir), coco_image(assets_dir, "000000471345.jpg")]


# ----------------------------------------------------------------------------- the network itself


def test_yolov4_tiny_real_weights_match_onnxruntime(tiny_net, yolo_tiny_onnx, assets_dir):
    x = fit_image(video_frame(assets_dir, 120), 416, letter_box=False)[0][None]
    ref = ort_run(yolo_tiny_onnx, x)
    ours = torch_run(tiny_net, x)
    assert_close(ours, ref, what="yolov4-tiny torch vs ORT")
    assert tiny_net.num_boxes == 2535 and tiny_net.num_classes == 80
    assert ref[1][0, :, 0].max() > 0.5, "vtest frame 120 shows people"


def test_rectangular_input_matches_onnxruntime(yolo_tiny, assets_dir, tmp_path):
    """model.input_height_px: a 416x320 network (13x10 and 26x20 grids) from darknet, from our ONNX file,
    and as a backend, against ONNX Runtime on the same file."""
    onnx_path = convert(yolo_tiny.cfg, yolo_tiny.weights, tmp_path / "tiny-416x320.onnx", (416, 320))
    net = from_darknet(yolo_tiny.cfg, yolo_tiny.weights, (416, 320)).eval()
    assert net.input_shape == (416, 320) and net.num_boxes == 3 * (13 * 10 + 26 * 20)
    x = fit_image(video_frame(assets_dir, 120), (416, 320), letter_box=False)[0][None]
    ref = ort_run(onnx_path, x)
    assert_close(torch_run(net, x), ref, what="416x320 torch vs ORT")
    assert_close(torch_run(from_onnx(onnx_path, yolo_tiny.cfg), x), ref, what="416x320 from_onnx vs ORT")
    with pytest.raises(ValueError, match=r"\(N, 3, 320, 416\)"):
        torch_run(net, np.zeros((1, 3, 416, 416), np.float32))
    model = ResolvedModel(onnx=onnx_path, cfg=yolo_tiny.cfg, weights=yolo_tiny.weights, labels=yolo_tiny.names)
    backend = TorchBackend.from_model(
        model, ModelConfig(onnx=str(onnx_path), backend="torch", input_height_px=320), 1, device="cpu"
    )
    assert backend.input_shape_px == (416, 320)
    frame = video_frame(assets_dir, 120)
    ours = Detector(backend, load_labels(yolo_tiny.names), ModelConfig(onnx=str(onnx_path))).detect([frame])[0][0]
    theirs = Detector.from_config(
        ModelConfig(onnx=str(onnx_path), backend="onnxruntime"), onnx_path, yolo_tiny.names
    ).detect([frame])[0][0]
    assert len(ours) == len(theirs) > 3 and np.abs(ours.xyxy - theirs.xyxy).max() < 0.5


def test_from_onnx_equals_from_darknet(tiny_net, yolo_tiny, yolo_tiny_onnx, assets_dir, tmp_path):
    x = fit_image(coco_image(assets_dir), 416, letter_box=False)[0][None]
    want = torch_run(tiny_net, x)
    got = torch_run(from_onnx(yolo_tiny_onnx), x)  # the cfg is found next to the ONNX file by its metadata
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])

    lonely = tmp_path / "alone" / "tiny.onnx"
    lonely.parent.mkdir()
    shutil.copyfile(yolo_tiny_onnx, lonely)
    with pytest.raises(ModelFileError, match=r"set model\.cfg and model\.weights.*source_cfg='yolov4-tiny\.cfg'"):
        from_onnx(lonely)
    (lonely.parent / "yolov4-tiny.cfg").write_text(Path(yolo_tiny.cfg).read_text() + "\n# edited\n")
    with pytest.raises(ModelFileError, match="not found next to it with sha256"):
        from_onnx(lonely)
    np.testing.assert_array_equal(torch_run(from_onnx(lonely, yolo_tiny.cfg), x)[1], want[1])


def test_full_yolov4_generated_weights_match_our_onnx(assets_dir, tmp_path):
    cfg = tmp_path / "yolov4.cfg"
    shutil.copyfile(assets_dir / "models" / "yolov4.cfg", cfg)
    weights = random_weights(cfg, tmp_path / "yolov4-random.weights")
    size = 320
    onnx_path = convert(cfg, weights, tmp_path / "yolov4-320.onnx", size)
    x = fit_image(coco_image(assets_dir, "000000565004.jpg"), size, letter_box=False)[0][None]
    ref = ort_run(onnx_path, x)
    assert ref[1].std() > 0.02, "generated weights should give varied scores"
    net = from_darknet(cfg, weights, size)
    assert net.num_boxes == 3 * (40**2 + 20**2 + 10**2)
    assert_close(torch_run(net, x), ref, what="yolov4 (generated weights) torch vs ORT")
    assert_close(torch_run(from_onnx(onnx_path), x), ref, what="yolov4 from ONNX initializers vs ORT")


def test_every_layer_variant_matches_our_onnx(assets_dir, tmp_path):
    """Grouped conv, mish/logistic/linear, asymmetric and SPP maxpool, route groups, shortcut, upsample, scale_x_y."""
    cfg = tmp_path / "zoo.cfg"
    cfg.write_text(ZOO_CFG)
    weights = random_weights(cfg, tmp_path / "zoo.weights", seed=3)
    onnx_path = convert(cfg, weights, tmp_path / "zoo.onnx", 64)
    x = np.concatenate(
        [
            fit_image(video_frame(assets_dir, 10), 64, letter_box=False)[0][None],
            fit_image(coco_image(assets_dir), 64, letter_box=False)[0][None],
        ]
    )
    assert_close(torch_run(from_darknet(cfg, weights, 64), x), ort_run(onnx_path, x), what="layer zoo")


def test_channels_last_and_fp16_body_on_cpu(yolo_tiny, assets_dir):
    x = fit_image(video_frame(assets_dir, 200), 160, letter_box=False)[0][None]
    ref = torch_run(from_darknet(yolo_tiny.cfg, yolo_tiny.weights, 160), x)
    cl = from_darknet(yolo_tiny.cfg, yolo_tiny.weights, 160).to(memory_format=torch.channels_last)
    assert_close(torch_run(cl, x), ref, what="channels_last")
    half = from_darknet(yolo_tiny.cfg, yolo_tiny.weights, 160).set_compute_dtype(torch.float16)
    assert all(c.weight.dtype == torch.float16 for c in half.convs.values())
    assert all(h.offset.dtype == torch.float32 for h in half.heads.values()), "heads decode in float32"
    try:
        got = torch_run(half, x)
    except RuntimeError as exc:  # CPU half convolution missing in this torch build
        pytest.skip(f"fp16 convolution on CPU not available: {exc}")
    assert_close(got, ref, box_atol=2.0, score_atol=2e-2, what="fp16 body (CPU) vs fp32")


def test_network_checks_its_input_and_cfg(tiny_net, yolo_tiny, tmp_path):
    with pytest.raises(ValueError, match=r"images must have shape \(N, 3, 416, 416\), got \(1, 3, 320, 320\)"):
        tiny_net(torch.zeros(1, 3, 320, 320))
    bad = tmp_path / "new_coords.cfg"
    bad.write_text(Path(yolo_tiny.cfg).read_text().replace("[yolo]", "[yolo]\nnew_coords=1", 1))
    with pytest.raises(ModelFileError, match="new_coords=1"):
        from_darknet(bad, yolo_tiny.weights, 416)
    with pytest.raises(ValueError, match="input_size must be a positive multiple of 32, got 400"):
        from_darknet(yolo_tiny.cfg, yolo_tiny.weights, 400)


# ----------------------------------------------------------------------------- the backend on CPU


def test_backend_batch_of_three_equals_singles(cpu_backend, yolo_tiny_onnx, assets_dir):
    batch, _ = preprocess_batch(mixed_images(assets_dir), 416, letter_box=False)
    boxes3, scores3 = cpu_backend.infer(batch)
    assert boxes3.shape == (3, 2535, 4) and scores3.shape == (3, 2535, 80)
    assert boxes3.dtype == scores3.dtype == np.float32
    for i in range(3):
        b1, s1 = cpu_backend.infer(batch[i : i + 1])
        np.testing.assert_allclose(boxes3[i], b1[0], atol=1e-3, rtol=1e-5)
        np.testing.assert_allclose(scores3[i], s1[0], atol=1e-5)
    assert_close((boxes3, scores3), ort_run(yolo_tiny_onnx, batch), what="batch of 3 vs ORT")
    assert not np.allclose(scores3[0], scores3[1])
    with pytest.raises(ValueError, match=r"batch must have shape \(N, 3, 416, 416\), got \(3, 416, 416\)"):
        cpu_backend.infer(batch[0])


@pytest.mark.parametrize("letter_box", [False, True])
def test_device_fit_matches_numpy_fit(cpu_backend, assets_dir, letter_box):
    frame = video_frame(assets_dir, 50)
    rng = np.random.default_rng(1)
    images = (
        mixed_images(assets_dir)
        + [
            frame,
            frame[::2].copy(),
            cv2.resize(frame, (200, 150)),
            rng.integers(0, 256, (300, 500, 3), dtype=np.uint8),
            np.ascontiguousarray(frame[:, :416]),  # already 416 wide
            np.ascontiguousarray(frame[:416, :416]),
        ]
    )  # already the input size
    x, metas = cpu_backend.preprocess_on_device(images, letter_box=letter_box)
    ref, ref_metas = preprocess_batch(images, 416, letter_box=letter_box)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and tuple(x.shape) == ref.shape
    assert metas == ref_metas
    assert any(m.pad_y_px for m in metas) is letter_box
    diff = np.abs(x.numpy() - ref)
    worst, share = float(diff.max()) * 255, float((diff > 1e-6).mean())
    print(f"\ndevice fit (letter_box={letter_box}) vs cv2: max {worst:.3f} grey levels, {share:.1%} of values differ")
    assert worst <= 1.0 + 1e-3, "bilinear on the device is within one grey level of cv2.INTER_LINEAR"
    assert share < 0.2
    for i, m in enumerate(metas):  # the padding is identical
        if m.pad_y_px:
            np.testing.assert_array_equal(x.numpy()[i, :, : m.pad_y_px], ref[i, :, : m.pad_y_px])
    boxes, scores = cpu_backend.infer(x)
    ref_boxes, ref_scores = cpu_backend.infer(ref)
    assert np.abs(scores - ref_scores).max() < 0.05
    with pytest.raises(ValueError, match=r"images\[1\] must be an HxWx3 uint8 BGR array"):
        cpu_backend.preprocess_on_device([frame, frame.astype(np.float32)], letter_box=letter_box)


def test_backend_reports_the_cfgs_letter_box(cpu_backend, yolo_tiny, tmp_path):
    assert cpu_backend.letter_box is False  # yolov4-tiny.cfg: darknet stretches
    cfg = tmp_path / "tiny-lb.cfg"
    cfg.write_text(yolo_tiny.cfg.read_text().replace("[net]\n", "[net]\nletter_box=1\n", 1))
    assert TorchBackend(from_darknet(cfg, yolo_tiny.weights, 160), "fp32", "cpu").letter_box is True


def test_create_backend_torch_without_cuda_is_unavailable(yolo_tiny, yolo_tiny_onnx):
    if HAS_CUDA:
        pytest.skip("this machine has CUDA: the torch backend is available")
    model = ResolvedModel(onnx=yolo_tiny_onnx, cfg=yolo_tiny.cfg, weights=yolo_tiny.weights)
    settings = ModelConfig(onnx=str(yolo_tiny_onnx), backend="torch")
    with pytest.raises(BackendUnavailable, match="no CUDA"):
        create_backend(settings, model, 4)
    with pytest.raises(BackendUnavailable, match="no CUDA"):
        TorchBackend.from_model(model, settings, 4)
    with pytest.raises(BackendUnavailable, match="no CUDA"):
        TorchBackend(from_darknet(yolo_tiny.cfg, yolo_tiny.weights, 416), "fp16", "cuda")


def test_backend_argument_errors(tiny_net, yolo_tiny, yolo_tiny_onnx):
    with pytest.raises(BackendUnavailable, match=r"model\.precision='int8' needs TensorRT"):
        TorchBackend(tiny_net, "int8", "cpu")
    with pytest.raises(ValueError, match="precision must be one of .*got 'bf16'"):
        TorchBackend(tiny_net, "bf16", "cpu")
    with pytest.raises(ValueError, match="device must be 'cuda', 'cuda:N' or 'cpu', got 'tpu'"):
        TorchBackend(tiny_net, "fp32", "tpu")
    with pytest.raises(ValueError, match="max_batch_size must be an integer >= 1, got 0"):
        TorchBackend(tiny_net, "fp32", "cpu", max_batch_size=0)
    int8 = ModelConfig(onnx=str(yolo_tiny_onnx), backend="torch", precision="int8")
    with pytest.raises(BackendUnavailable, match="int8"):
        TorchBackend.from_model(ResolvedModel(onnx=yolo_tiny_onnx), int8, 1, device="cpu")
    backend = TorchBackend(from_darknet(yolo_tiny.cfg, yolo_tiny.weights, 416), "fp32", "cpu")
    assert backend.describe().startswith(f"torch {torch.__version__} (cpu") and backend.input_size_px == 416
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.infer(np.zeros((1, 3, 416, 416), np.float32))


def coco_map(backend, yolo_tiny, assets_dir, **settings) -> dict:
    cfg = ModelConfig(onnx="unused.onnx", conf_threshold=0.001, max_detections=100, **settings)
    detector = Detector(backend, load_labels(yolo_tiny.names), cfg)
    return evaluate(detector, assets_dir / "coco-mini" / "images", assets_dir / "coco-mini" / "instances.json")


@pytest.fixture(scope="module")
def ort_map(yolo_tiny, yolo_tiny_onnx, assets_dir) -> dict:
    from pipeline.models.backends.onnxruntime import OnnxRuntimeBackend

    return coco_map(OnnxRuntimeBackend(yolo_tiny_onnx), yolo_tiny, assets_dir)


def test_map_on_coco_mini_equals_onnxruntime(cpu_backend, ort_map, yolo_tiny, assets_dir):
    ours = coco_map(cpu_backend, yolo_tiny, assets_dir)
    print(f"\nmAP torch (cpu, fp32) {ours} vs ORT {ort_map}")
    assert ours["images"] == 6 and ours["backend"].startswith("torch")
    assert abs(ours["map50"] - ort_map["map50"]) <= 0.1 and abs(ours["map50_95"] - ort_map["map50_95"]) <= 0.1


def test_cpu_speed_next_to_onnxruntime(cpu_backend, yolo_tiny_onnx, assets_dir):
    """Batch-1 latency of both on this CPU (reported; torch on CPU is a diagnostic path, not a target)."""
    from pipeline.models.backends.onnxruntime import OnnxRuntimeBackend

    x, _ = preprocess_batch([video_frame(assets_dir, 5)], 416, letter_box=False)
    timings = {}
    for name, backend in (("onnxruntime", OnnxRuntimeBackend(yolo_tiny_onnx)), ("torch", cpu_backend)):
        backend.infer(x)
        started = time.perf_counter()
        for _ in range(10):
            backend.infer(x)
        timings[name] = (time.perf_counter() - started) / 10 * 1000
    print(f"\nbatch-1 latency on CPU: {', '.join(f'{k} {v:.1f} ms' for k, v in timings.items())}")
    assert timings["torch"] < 10 * timings["onnxruntime"]


# ----------------------------------------------------------------------------- GPU


@pytest.fixture(scope="module")
def gpu_model(yolo_tiny, yolo_tiny_onnx) -> ResolvedModel:
    return ResolvedModel(onnx=yolo_tiny_onnx, cfg=yolo_tiny.cfg, weights=yolo_tiny.weights, labels=yolo_tiny.names)


@pytest.mark.gpu
def test_gpu_fp32_matches_onnxruntime(gpu_model, yolo_tiny_onnx, assets_dir):
    settings = ModelConfig(onnx=str(yolo_tiny_onnx), backend="torch", precision="fp32")
    backend = create_backend(settings, gpu_model, 4)
    assert isinstance(backend, TorchBackend) and backend.cuda and backend.precision == "fp32"
    batch, _ = preprocess_batch(mixed_images(assets_dir), 416, letter_box=False)
    assert_close(
        backend.infer(batch),
        ort_run(yolo_tiny_onnx, batch),
        box_atol=2e-2,
        score_atol=2e-4,
        what="CUDA fp32 vs ORT CPU",
    )


@pytest.mark.gpu
def test_gpu_fp16_outputs_and_map_close_to_onnxruntime(gpu_model, yolo_tiny, yolo_tiny_onnx, ort_map, assets_dir):
    settings = ModelConfig(onnx=str(yolo_tiny_onnx), backend="torch", precision="fp16")
    backend = TorchBackend.from_model(gpu_model, settings, 4)
    assert backend.precision == "fp16" and "fp16" in backend.describe()
    batch, _ = preprocess_batch(mixed_images(assets_dir), 416, letter_box=False)
    boxes, scores = backend.infer(batch)
    assert boxes.dtype == scores.dtype == np.float32
    ref_boxes, ref_scores = ort_run(yolo_tiny_onnx, batch)
    confident = ref_scores.max(-1) > 0.3
    assert np.abs(boxes - ref_boxes)[confident].max() < 2.0
    assert np.abs(scores - ref_scores).max() < 2e-2
    ours = coco_map(backend, yolo_tiny, assets_dir, precision="fp16")
    print(f"\nmAP torch (cuda, fp16) {ours} vs ORT fp32 {ort_map}")
    assert abs(ours["map50"] - ort_map["map50"]) <= 0.5 and abs(ours["map50_95"] - ort_map["map50_95"]) <= 0.5


@pytest.mark.gpu
def test_gpu_letterbox_and_tensor_input(gpu_model, yolo_tiny_onnx, assets_dir):
    backend = TorchBackend.from_model(
        gpu_model, ModelConfig(onnx=str(yolo_tiny_onnx), backend="torch", precision="fp32"), 4
    )
    images = mixed_images(assets_dir)
    for letter_box in (False, True):
        x, metas = backend.preprocess_on_device(images, letter_box=letter_box)
        assert x.device.type == "cuda"
        ref, ref_metas = preprocess_batch(images, 416, letter_box=letter_box)
        assert metas == ref_metas
        assert float((x.cpu() - torch.from_numpy(ref)).abs().max()) * 255 <= 1.0 + 1e-3
        on_device, from_host = backend.infer(x), backend.infer(ref)
        assert np.abs(on_device[1] - from_host[1]).max() < 0.05


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_throughput_batches_1_4_8(gpu_model, yolo_tiny_onnx, assets_dir):
    backend = TorchBackend.from_model(
        gpu_model, ModelConfig(onnx=str(yolo_tiny_onnx), backend="torch", precision="fp16"), 8
    )
    frame, _ = preprocess_batch([video_frame(assets_dir, 60)], 416, letter_box=False)
    single = backend.infer(frame)
    rates = {}
    for n in (1, 4, 8):
        batch = np.repeat(frame, n, axis=0)
        boxes, scores = backend.infer(batch)
        np.testing.assert_allclose(scores[-1], single[1][0], atol=1e-2)
        runs = 30
        started = time.perf_counter()
        for _ in range(runs):
            backend.infer(batch)
        rates[n] = n * runs / (time.perf_counter() - started)
    print(f"\ntorch CUDA fp16 yolov4-tiny 416: {', '.join(f'batch {n}: {r:.0f} img/s' for n, r in rates.items())}")
    assert rates[1] > 50, rates
    assert rates[8] > rates[1], "batching must raise throughput"
