"""The TensorRT backend.

- Without TensorRT (this CPU machine): the errors say what to install, and `auto` picks a CPU backend.
- With a strict stand-in for TensorRT 10 and pycuda whose "GPU" runs the real ONNX model through
  ONNX Runtime: the build/cache/calibration/accuracy-gate flow and the named-tensor inference path
  (page-locked buffers, one stream, async copies, per-batch input shapes, chunking) on CPU.
- `@pytest.mark.gpu`: the same against real TensorRT on an NVIDIA GPU (skipped without one).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import json
import subprocess
import sys
import threading
import types
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from pipeline.config import ModelConfig
from pipeline.detector import Detector
from pipeline.models.accuracy import AccuracyError, compare_backends, eval_settings
from pipeline.models.backends import BackendUnavailable, choose_backend, create_backend
from pipeline.models.backends.onnxruntime import OnnxRuntimeBackend
from pipeline.models.backends.tensorrt import TensorRTBackend, build_engine, onnx_input
from pipeline.models.calibration import list_images
from pipeline.models.engine_cache import read_sidecar_for
from pipeline.models.labels import load_labels
from pipeline.models.resolve import ResolvedModel
from pipeline.models.yolo import preprocess_batch

ROOT = Path(__file__).resolve().parents[1]
INSTALL = r"pip install 'lookout\[tensorrt\]'"


@pytest.fixture(scope="module")
def coco_mini(assets_dir):
    return assets_dir / "coco-mini" / "images", assets_dir / "coco-mini" / "instances.json"


@pytest.fixture(scope="module")
def real_batch(coco_mini) -> np.ndarray:
    """The six coco-mini images, stretched as the detector does for yolov4-tiny, repeated to 12."""
    images = [cv2.imread(str(p)) for p in list_images(coco_mini[0])]
    batch, _ = preprocess_batch(images + images, 416, letter_box=False)
    return batch


@pytest.fixture(scope="module")
def ort_reference(yolo_tiny_onnx):
    return OnnxRuntimeBackend(yolo_tiny_onnx, providers=["CPUExecutionProvider"])


# ----- without TensorRT ----------------------------------------------------------------------------


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` / `import pycuda` fail, as on this machine (also on a GPU host)."""
    for name in ("tensorrt", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)


def test_module_imports_without_tensorrt():
    code = (
        "import sys, pipeline.models.backends.tensorrt; "
        "print(sorted(m for m in ('tensorrt', 'pycuda') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_create_backend_tensorrt_says_what_to_install(no_tensorrt, yolo_tiny_onnx):
    settings = ModelConfig(onnx=str(yolo_tiny_onnx), backend="tensorrt")
    with pytest.raises(BackendUnavailable, match=INSTALL) as err:
        create_backend(settings, ResolvedModel(onnx=yolo_tiny_onnx), 4)
    assert not isinstance(err.value, ImportError)


def test_from_model_without_tensorrt_says_what_to_install(no_tensorrt, yolo_tiny_onnx, tmp_path):
    settings = ModelConfig(onnx=str(yolo_tiny_onnx), backend="tensorrt")
    model = ResolvedModel(onnx=yolo_tiny_onnx, engine_cache_dir=tmp_path)
    with pytest.raises(BackendUnavailable, match=f"tensorrt/pycuda not installed: {INSTALL} on a GPU host with CUDA"):
        TensorRTBackend.from_model(model, settings, 4)
    with pytest.raises(BackendUnavailable, match=INSTALL):
        build_engine(yolo_tiny_onnx, "fp16", 4, cache_dir=tmp_path)
    with pytest.raises(BackendUnavailable, match=INSTALL):
        TensorRTBackend(tmp_path / "x.engine")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_auto_picks_onnxruntime_here_without_openvino(yolo_tiny_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # else auto picks OpenVINO on x86 (test_openvino_backend)
    assert choose_backend("auto") == "onnxruntime"
    backend = create_backend(
        ModelConfig(onnx=str(yolo_tiny_onnx), backend="auto"), ResolvedModel(onnx=yolo_tiny_onnx), 4
    )
    assert isinstance(backend, OnnxRuntimeBackend)


def test_auto_skips_tensorrt_when_missing(no_tensorrt):
    assert choose_backend("auto") != "tensorrt"


def test_int8_without_calibration_images_names_the_setting(no_tensorrt, yolo_tiny_onnx, tmp_path):
    with pytest.raises(ValueError, match=r"model.calib_images.*--calib-images"):
        build_engine(yolo_tiny_onnx, "int8", 4, calib_images=None, cache_dir=tmp_path)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"precision": "int4"}, "precision"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": 2.0}, "max_batch"),
        ({"input_size_px": 608}, "input_size_px=608"),
    ],
)
def test_bad_build_arguments_are_named(no_tensorrt, yolo_tiny_onnx, tmp_path, kwargs, name):
    args = {"precision": "fp16", "max_batch": 4, "cache_dir": tmp_path, **kwargs}
    with pytest.raises(ValueError, match=name):
        build_engine(yolo_tiny_onnx, **args)


def test_missing_onnx_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="onnx_path.*nope.onnx"):
        build_engine(tmp_path / "nope.onnx", "fp16", 1, cache_dir=tmp_path)


def test_onnx_input_side(yolo_tiny_onnx, tmp_path):
    assert onnx_input(yolo_tiny_onnx) == ("images", 416)
    assert onnx_input(yolo_tiny_onnx, 416) == ("images", 416)
    model = onnx.load(str(yolo_tiny_onnx))
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "S"
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(model, str(dynamic))
    with pytest.raises(ValueError, match="input_size_px is required"):
        onnx_input(dynamic)
    assert onnx_input(dynamic, 320) == ("images", 320)
    with pytest.raises(ValueError, match="multiple of 32"):
        onnx_input(dynamic, 100)


# ----- a strict stand-in for TensorRT 10 + pycuda --------------------------------------------------


class FakeGpu:
    """State of the pretend device: allocations, pinned host memory, contexts, streams, builds."""

    def __init__(self):
        self.addresses = itertools.count(1 << 32, 1 << 28)
        self.memory: dict[int, FakeDeviceMemory] = {}
        self.pinned: list[np.ndarray] = []
        self.streams: dict[int, FakeStream] = {}
        self.local = threading.local()
        self.retained = 0
        self.builds: list[dict] = []
        self.calibration_batches: list[np.ndarray] = []
        self.input_shapes: list[tuple] = []
        self.executions = 0
        self.int8_damage = False  # make INT8 engines lose people, to exercise the accuracy gate

    def require_context(self, what: str) -> None:
        if not getattr(self.local, "stack", None):
            raise AssertionError(f"{what} without a current CUDA context on thread {threading.current_thread().name}")

    def require_pinned(self, arr: np.ndarray, what: str) -> None:
        ptr, n = arr.__array_interface__["data"][0], arr.nbytes
        for p in self.pinned:
            start = p.__array_interface__["data"][0]
            if start <= ptr and ptr + n <= start + p.nbytes:
                return
        raise AssertionError(f"{what}: host memory is not page-locked (async copies need pagelocked_empty)")


class FakeDeviceMemory:
    def __init__(self, gpu: FakeGpu, nbytes: int):
        gpu.require_context("mem_alloc")
        self.gpu, self.data, self.address = gpu, bytearray(nbytes), next(gpu.addresses)
        gpu.memory[self.address] = self

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        self.gpu.require_context("free")
        assert self.address in self.gpu.memory, "double free"
        del self.gpu.memory[self.address]


class FakeStream:
    def __init__(self, gpu: FakeGpu):
        gpu.require_context("Stream()")
        self.gpu, self.queue, self.handle = gpu, [], next(gpu.addresses)
        gpu.streams[self.handle] = self

    def synchronize(self) -> None:
        self.gpu.require_context("synchronize")
        while self.queue:
            self.queue.pop(0)()


def make_fake_modules(gpu: FakeGpu) -> dict[str, types.ModuleType]:
    import onnxruntime as ort

    # --- pycuda.driver ---
    cuda = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class Context:
        def push(self):
            if not hasattr(gpu.local, "stack"):
                gpu.local.stack = []
            gpu.local.stack.append(self)

        @staticmethod
        def pop():
            assert getattr(gpu.local, "stack", None), "Context.pop() with no context pushed"
            gpu.local.stack.pop()

        def detach(self):
            gpu.retained -= 1

    class Device:
        def __init__(self, index):
            assert index == 0

        @staticmethod
        def count():
            return 1

        def name(self):
            return "Fake GPU 9000"

        def compute_capability(self):
            return (8, 9)

        def retain_primary_context(self):
            gpu.retained += 1
            return Context()

    def htod_async(dest, src, stream):
        gpu.require_context("memcpy_htod_async")
        gpu.require_pinned(src, "memcpy_htod_async")
        assert src.flags["C_CONTIGUOUS"] and src.nbytes <= len(dest.data), "copy larger than the device buffer"
        stream.queue.append(lambda: dest.data.__setitem__(slice(0, src.nbytes), src.tobytes()))

    def dtoh_async(dest, src, stream):
        gpu.require_context("memcpy_dtoh_async")
        gpu.require_pinned(dest, "memcpy_dtoh_async")
        assert dest.flags["C_CONTIGUOUS"] and dest.nbytes <= len(src.data), "copy larger than the device buffer"

        def copy():
            dest.reshape(-1)[:] = np.frombuffer(bytes(src.data[: dest.nbytes]), dest.dtype)

        stream.queue.append(copy)

    def htod(dest, src):
        gpu.require_context("memcpy_htod")
        src = np.ascontiguousarray(src)
        assert src.nbytes <= len(dest.data)
        dest.data[: src.nbytes] = src.tobytes()

    def pagelocked_empty(shape, dtype):
        gpu.require_context("pagelocked_empty")
        arr = np.empty(shape, dtype)
        gpu.pinned.append(arr)
        return arr

    cuda.Error, cuda.Context, cuda.Device = Error, Context, Device
    cuda.init = lambda: None
    cuda.mem_alloc = lambda n: FakeDeviceMemory(gpu, n)
    cuda.Stream = lambda: FakeStream(gpu)
    cuda.pagelocked_empty = pagelocked_empty
    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async, cuda.memcpy_htod = htod_async, dtoh_async, htod
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda

    # --- tensorrt ---
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0"
    MAGIC = b"FAKETRT10\n"

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class DataType:
        FLOAT = "FLOAT"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class BuilderFlag:
        FP16, INT8 = "FP16", "INT8"

    class IInt8EntropyCalibrator2:
        def __init__(self):
            self._base_init = True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):
            min, opt, max = tuple(min), tuple(opt), tuple(max)
            assert all(a <= b <= c for a, b, c in zip(min, opt, max)), (min, opt, max)
            self.shapes[name] = (min, opt, max)

    class Network:
        def __init__(self, flags):
            assert flags == 0, "TensorRT 10 networks are explicit-batch; pass 0 flags"
            self.onnx = None

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            try:
                model = onnx.load(path)
            except Exception as exc:
                self.errors.append(f"cannot parse {path}: {exc}")
                return False
            self.network.onnx = path
            self.network.input = model.graph.input[0].name
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class BuilderConfig:
        def __init__(self):
            self.flags, self.profiles, self.int8_calibrator, self.calibration_profile = set(), [], None, None
            self.pools = {}

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_calibration_profile(self, profile):
            self.calibration_profile = profile

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            gpu.require_context("build")
            assert network.onnx and len(config.profiles) == 1
            lo, opt, hi = config.profiles[0].shapes[network.input]
            precision = "int8" if "INT8" in config.flags else "fp16" if "FP16" in config.flags else "fp32"
            if precision == "int8":
                self._calibrate(network, config)
            gpu.builds.append(
                {"precision": precision, "min": lo, "opt": opt, "max": hi, "workspace": config.pools.get("WORKSPACE")}
            )
            header = {"onnx": network.onnx, "input": network.input, "min": lo, "max": hi, "precision": precision}
            return MAGIC + json.dumps(header).encode()

        @staticmethod
        def _calibrate(network, config):
            calib = config.int8_calibrator
            assert isinstance(calib, IInt8EntropyCalibrator2) and calib._base_init
            lo, opt, hi = config.calibration_profile.shapes[network.input]
            assert lo == opt == hi, "calibration needs one fixed shape"
            assert calib.get_batch_size() == lo[0]
            if calib.read_calibration_cache() is not None:
                return
            while (ptrs := calib.get_batch([network.input])) is not None:
                assert len(ptrs) == 1
                mem = gpu.memory[int(ptrs[0])]
                n = int(np.prod(lo))
                gpu.calibration_batches.append(np.frombuffer(bytes(mem.data[: n * 4]), np.float32).reshape(lo))
            calib.write_calibration_cache(b"fake calibration table")

    class Engine:
        def __init__(self, header):
            self.h = header
            self.session = ort.InferenceSession(header["onnx"], providers=["CPUExecutionProvider"])
            self.io = {header["input"]: ("INPUT", tuple(header["min"][1:]))}
            for o in self.session.get_outputs():
                self.io[o.name] = ("OUTPUT", tuple(o.shape[1:]))

        @property
        def num_io_tensors(self):
            return len(self.io)

        def get_tensor_name(self, i):
            return list(self.io)[i]

        def get_tensor_mode(self, name):
            return self.io[name][0]

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def get_tensor_shape(self, name):
            return (-1, *self.io[name][1])

        def get_tensor_profile_shape(self, name, index):
            assert index == 0 and self.io[name][0] == "INPUT"
            return [tuple(self.h["min"]), tuple(self.h["max"]), tuple(self.h["max"])]

        def create_execution_context(self):
            return ExecutionContext(self)

    class ExecutionContext:
        def __init__(self, engine):
            self.engine, self.addresses, self.batch = engine, {}, None

        def set_input_shape(self, name, shape):
            lo, hi = self.engine.h["min"], self.engine.h["max"]
            shape = tuple(shape)
            if (
                name != self.engine.h["input"]
                or len(shape) != 4
                or not all(a <= s <= b for a, s, b in zip(lo, shape, hi))
            ):
                return False
            self.batch = shape[0]
            gpu.input_shapes.append(shape)
            return True

        def get_tensor_shape(self, name):
            return (self.batch if self.batch is not None else -1, *self.engine.io[name][1])

        def set_tensor_address(self, name, address):
            if name not in self.engine.io or int(address) not in gpu.memory:
                return False
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle):
            gpu.require_context("execute_async_v3")
            assert set(self.addresses) == set(self.engine.io), "every tensor needs an address"
            assert self.batch is not None, "set_input_shape before execute"
            stream, batch, h = gpu.streams[stream_handle], self.batch, self.engine.h

            def run():
                gpu.executions += 1
                shape = (batch, *self.engine.io[h["input"]][1])
                n = int(np.prod(shape))
                x = np.frombuffer(bytes(gpu.memory[self.addresses[h["input"]]].data[: n * 4]), np.float32)
                outs = self.engine.session.run(None, {h["input"]: x.reshape(shape)})
                for o, value in zip(self.engine.session.get_outputs(), outs):
                    if h["precision"] != "fp32":
                        value = value.astype(np.float16).astype(np.float32)
                    if h["precision"] == "int8" and gpu.int8_damage and o.name == "scores":
                        value[..., 0] = 0.0
                    raw = value.astype(np.float32).tobytes()
                    mem = gpu.memory[self.addresses[o.name]]
                    assert len(raw) <= len(mem.data), f"output {o.name} overflows its device buffer"
                    mem.data[: len(raw)] = raw

            stream.queue.append(run)
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            gpu.require_context("deserialize")
            if not bytes(data).startswith(MAGIC):
                return None
            return Engine(json.loads(bytes(data)[len(MAGIC) :]))

    for obj in (
        Logger,
        TensorIOMode,
        DataType,
        MemoryPoolType,
        BuilderFlag,
        IInt8EntropyCalibrator2,
        Builder,
        OnnxParser,
        Runtime,
    ):
        setattr(trt, obj.__name__, obj)
    trt.nptype = lambda dtype: {"FLOAT": np.float32}[dtype]
    for name, mod in (("tensorrt", trt), ("pycuda", pycuda), ("pycuda.driver", cuda)):
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return {"tensorrt": trt, "pycuda": pycuda, "pycuda.driver": cuda}


@pytest.fixture
def fake_gpu(monkeypatch):
    gpu = FakeGpu()
    for name, mod in make_fake_modules(gpu).items():
        monkeypatch.setitem(sys.modules, name, mod)
    return gpu


def _settings(onnx_path, **kw) -> ModelConfig:
    return ModelConfig(onnx=str(onnx_path), backend="tensorrt", **kw)


def test_fake_build_is_cached_per_key(fake_gpu, yolo_tiny_onnx, tmp_path):
    path = build_engine(yolo_tiny_onnx, "fp16", 4, cache_dir=tmp_path, workspace_mb=512)
    assert path.parent == tmp_path and path.suffix == ".engine"
    assert "trt10.99.0" in path.name and "fake-gpu-9000" in path.name and "fp16" in path.name
    assert fake_gpu.builds == [
        {
            "precision": "fp16",
            "min": (1, 3, 416, 416),
            "opt": (4, 3, 416, 416),
            "max": (4, 3, 416, 416),
            "workspace": 512 << 20,
        }
    ]
    side = read_sidecar_for(path)
    assert side["key"]["max_batch"] == 4 and side["key"]["gpu_name"] == "Fake GPU 9000"
    assert side["build"]["profile"] == {"min": 1, "opt": 4, "max": 4}
    mtime = path.stat().st_mtime_ns
    assert build_engine(yolo_tiny_onnx, "fp16", 4, cache_dir=tmp_path) == path
    assert len(fake_gpu.builds) == 1 and path.stat().st_mtime_ns == mtime
    other = build_engine(yolo_tiny_onnx, "fp32", 4, cache_dir=tmp_path)
    assert other != path and fake_gpu.builds[-1]["precision"] == "fp32"
    assert build_engine(yolo_tiny_onnx, "fp16", 4, cache_dir=tmp_path, force=True) == path
    assert len(fake_gpu.builds) == 3
    assert fake_gpu.retained == 0, "every retained CUDA context is released"


def test_fake_inference_matches_onnxruntime_and_splits_big_batches(
    fake_gpu, yolo_tiny_onnx, tmp_path, real_batch, ort_reference
):
    backend = TensorRTBackend(build_engine(yolo_tiny_onnx, "fp16", 4, cache_dir=tmp_path))
    assert backend.input_size_px == 416 and backend.max_batch == 4
    assert "fp16" in backend.describe() and "batch 1..4" in backend.describe()
    for n in (1, 3, 4, 9):
        fake_gpu.input_shapes.clear()
        boxes, scores = backend.infer(real_batch[:n])
        ref_boxes, ref_scores = ort_reference.infer(real_batch[:n])
        assert boxes.shape == ref_boxes.shape == (n, 2535, 4) and scores.shape == (n, 2535, 80)
        assert boxes.dtype == scores.dtype == np.float32
        np.testing.assert_allclose(boxes, ref_boxes, atol=0.5)
        np.testing.assert_allclose(scores, ref_scores, atol=2e-3)
        assert [s[0] for s in fake_gpu.input_shapes] == [min(4, n - i) for i in range(0, n, 4)]
    empty = backend.infer(real_batch[:0])
    assert empty[0].shape == (0, 2535, 4) and empty[1].shape == (0, 2535, 80)
    with pytest.raises(ValueError, match=r"\(N, 3, 416, 416\).*\(2, 3, 320, 320\)"):
        backend.infer(np.zeros((2, 3, 320, 320), np.float32))
    backend.close()
    assert fake_gpu.memory == {} and fake_gpu.retained == 0
    backend.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        backend.infer(real_batch[:1])


def test_fake_inference_from_other_threads(fake_gpu, yolo_tiny_onnx, tmp_path, real_batch, ort_reference):
    backend = TensorRTBackend(build_engine(yolo_tiny_onnx, "fp32", 2, cache_dir=tmp_path))
    results, errors = {}, []

    def work(i):
        try:
            results[i] = backend.infer(real_batch[i : i + 3])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, (boxes, scores) in results.items():
        ref_boxes, ref_scores = ort_reference.infer(real_batch[i : i + 3])
        np.testing.assert_allclose(boxes, ref_boxes, atol=1e-3)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    backend.close()


def test_fake_create_backend_and_detector(fake_gpu, yolo_tiny_onnx, tmp_path, coco_mini):
    settings = _settings(yolo_tiny_onnx, precision="fp16")
    model = ResolvedModel(onnx=yolo_tiny_onnx, engine_cache_dir=tmp_path)
    detector = Detector(create_backend(settings, model, 4), load_labels(None), settings)
    assert isinstance(detector.backend, TensorRTBackend)
    reference = Detector(OnnxRuntimeBackend(yolo_tiny_onnx), load_labels(None), settings)
    images = [cv2.imread(str(p)) for p in list_images(coco_mini[0])]
    got, timings = detector.detect(images)
    want, _ = reference.detect(images)
    assert timings["infer_s"] > 0
    for g, w in zip(got, want, strict=True):
        assert sorted(g.class_id.tolist()) == sorted(w.class_id.tolist())
    # A second replica on this node reuses the engine.
    again = TensorRTBackend.from_model(model, settings, 4)
    assert again.engine_file == detector.backend.engine_file and len(fake_gpu.builds) == 1
    again.close()
    detector.backend.close()


def test_fake_int8_calibrates_on_real_images_and_passes_the_gate(fake_gpu, yolo_tiny_onnx, tmp_path, coco_mini):
    images, annotations = coco_mini
    settings = _settings(yolo_tiny_onnx, precision="int8", calib_images=str(images))
    model = ResolvedModel(onnx=yolo_tiny_onnx, engine_cache_dir=tmp_path, calib_images=images)
    backend = TensorRTBackend.from_model(model, settings, 4)
    assert "int8" in backend.describe()
    # 6 images, calibration batch min(8, 6) = 6: one batch, identical to the detector's preprocessing.
    assert len(fake_gpu.calibration_batches) == 1
    expected, _ = preprocess_batch([cv2.imread(str(p)) for p in list_images(images)], 416, letter_box=False)
    np.testing.assert_array_equal(fake_gpu.calibration_batches[0], expected)
    side = read_sidecar_for(backend.engine_file)
    assert side["key"]["precision"] == "int8" and side["key"]["calib"]
    assert side["build"]["calibration"]["images"] == 6
    assert side["build"]["calibration"]["letter_box"] is False and side["build"]["model_letter_box"] is False
    assert backend.letter_box is False  # what the model records, from the sidecar
    acc = side["build"]["accuracy"]
    assert acc["ok"] and acc["precision"] == "int8" and acc["tolerance_points"] == 1.5
    assert abs(acc["drop_points"]) <= 1.5 and acc["reference_map50"] > 20
    calib_cache = backend.engine_file.with_suffix(".calib")
    assert calib_cache.read_bytes() == b"fake calibration table"
    backend.close()
    # A rebuild of a lost engine reuses the calibration cache instead of calibrating again.
    backend.engine_file.unlink()
    assert build_engine(yolo_tiny_onnx, "int8", 4, calib_images=images, cache_dir=tmp_path) == backend.engine_file
    assert len(fake_gpu.builds) == 2 and len(fake_gpu.calibration_batches) == 1


def test_fake_int8_calibration_fits_images_as_model_letter_box_says(fake_gpu, yolo_tiny_onnx, tmp_path, coco_mini):
    images, _ = coco_mini
    pictures = [cv2.imread(str(p)) for p in list_images(images)]
    stretched = build_engine(yolo_tiny_onnx, "int8", 4, calib_images=images, cache_dir=tmp_path)
    boxed = build_engine(yolo_tiny_onnx, "int8", 4, calib_images=images, cache_dir=tmp_path, letter_box=True)
    assert boxed != stretched, "a calibration on other pixels is another engine"
    assert len(fake_gpu.calibration_batches) == 2
    for batch, letter_box in zip(fake_gpu.calibration_batches, (False, True)):
        np.testing.assert_array_equal(batch, preprocess_batch(pictures, 416, letter_box=letter_box)[0])
    assert read_sidecar_for(boxed)["build"]["calibration"]["letter_box"] is True


def test_fake_int8_engine_that_loses_accuracy_is_not_cached(fake_gpu, yolo_tiny_onnx, tmp_path, coco_mini):
    images, annotations = coco_mini
    fake_gpu.int8_damage = True
    with pytest.raises(AccuracyError, match=r"int8 loses .* rejected and not cached"):
        build_engine(yolo_tiny_onnx, "int8", 4, calib_images=images, cache_dir=tmp_path, eval_annotations=annotations)
    assert len(fake_gpu.builds) == 1
    left = [p.name for p in tmp_path.iterdir()]
    assert not [n for n in left if n.endswith((".engine", ".calib", ".tmp", ".json"))], left
    assert fake_gpu.memory == {} and fake_gpu.retained == 0
    # Fixed (here: the damage goes away), the next attempt calibrates afresh and is cached.
    fake_gpu.int8_damage = False
    path = build_engine(
        yolo_tiny_onnx, "int8", 4, calib_images=images, cache_dir=tmp_path, eval_annotations=annotations
    )
    assert path.is_file() and len(fake_gpu.calibration_batches) == 2


def test_fake_damaged_engine_is_rebuilt(fake_gpu, yolo_tiny_onnx, tmp_path):
    settings = _settings(yolo_tiny_onnx, precision="fp16")
    model = ResolvedModel(onnx=yolo_tiny_onnx, engine_cache_dir=tmp_path)
    path = build_engine(yolo_tiny_onnx, "fp16", 2, cache_dir=tmp_path)
    path.write_bytes(b"garbage")
    backend = TensorRTBackend.from_model(model, settings, 2)
    assert backend.engine_file == path and len(fake_gpu.builds) == 2
    backend.close()


# ----- real TensorRT on an NVIDIA GPU --------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.mark.gpu
def test_gpu_fp16_engine_matches_onnxruntime(yolo_tiny_onnx, gpu_cache, real_batch, ort_reference):
    backend = TensorRTBackend(build_engine(yolo_tiny_onnx, "fp16", 8, cache_dir=gpu_cache))
    try:
        assert backend.max_batch == 8 and backend.input_size_px == 416
        boxes, scores = backend.infer(real_batch[:8])
        ref_boxes, ref_scores = ort_reference.infer(real_batch[:8])
        assert np.abs(scores - ref_scores).max() < 0.05
        confident = ref_scores.max(axis=-1) > 0.25
        assert confident.sum() > 10
        assert np.percentile(np.abs(boxes - ref_boxes)[confident], 99) < 2.0  # pixels at 416
    finally:
        backend.close()


@pytest.mark.gpu
def test_gpu_every_batch_size_up_to_max_and_beyond(yolo_tiny_onnx, gpu_cache, real_batch):
    backend = TensorRTBackend(build_engine(yolo_tiny_onnx, "fp16", 8, cache_dir=gpu_cache))
    try:
        single = [backend.infer(real_batch[i : i + 1]) for i in range(12)]
        for n in list(range(1, 9)) + [11, 12]:
            boxes, scores = backend.infer(real_batch[:n])
            assert boxes.shape == (n, 2535, 4) and scores.shape == (n, 2535, 80)
            for i in range(n):
                np.testing.assert_allclose(scores[i], single[i][1][0], atol=0.02)
    finally:
        backend.close()


@pytest.mark.gpu
def test_gpu_engine_reused_on_second_load(yolo_tiny_onnx, gpu_cache):
    first = build_engine(yolo_tiny_onnx, "fp16", 8, cache_dir=gpu_cache)
    stamp = (first.stat().st_ino, first.stat().st_mtime_ns, read_sidecar_for(first)["built_at"])
    settings = _settings(yolo_tiny_onnx, precision="fp16")
    backend = TensorRTBackend.from_model(ResolvedModel(onnx=yolo_tiny_onnx, engine_cache_dir=gpu_cache), settings, 8)
    try:
        assert backend.engine_file == first
        assert (first.stat().st_ino, first.stat().st_mtime_ns, read_sidecar_for(first)["built_at"]) == stamp
    finally:
        backend.close()


@pytest.mark.gpu
def test_gpu_fp16_map_within_half_a_point(yolo_tiny_onnx, gpu_cache, coco_mini):
    backend = TensorRTBackend(build_engine(yolo_tiny_onnx, "fp16", 8, cache_dir=gpu_cache))
    try:
        candidate = Detector(backend, load_labels(None), eval_settings(yolo_tiny_onnx, precision="fp16"))
        report = compare_backends(yolo_tiny_onnx, candidate, *coco_mini, batch_size=4)
        assert report.ok, report.message
    finally:
        backend.close()


@pytest.mark.gpu
def test_gpu_int8_calibrated_on_coco_mini_within_1_5_points(yolo_tiny_onnx, gpu_cache, coco_mini):
    images, annotations = coco_mini
    # The build itself runs the gate (AccuracyError if it loses more than 1.5 points).
    path = build_engine(
        yolo_tiny_onnx, "int8", 4, calib_images=images, cache_dir=gpu_cache, eval_annotations=annotations
    )
    assert path.with_suffix(".calib").is_file()
    assert read_sidecar_for(path)["build"]["accuracy"]["ok"]
    backend = TensorRTBackend(path)
    try:
        candidate = Detector(backend, load_labels(None), eval_settings(yolo_tiny_onnx, precision="int8"))
        report = compare_backends(yolo_tiny_onnx, candidate, images, annotations, batch_size=4)
        assert report.drop_points <= 1.5, report.message
    finally:
        backend.close()
