"""TensorRT backend: an engine built from the ONNX file once per node, run with TensorRT 10's
named-tensor API (set_input_shape / set_tensor_address / execute_async_v3).

tensorrt and pycuda are imported only when an engine is built or loaded; without them every entry
point raises BackendUnavailable saying what to install.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.models.backends.base import Backend, BackendUnavailable
from pipeline.models.engine_cache import (
    PRECISIONS,
    EngineKey,
    calibration_cache_path,
    engine_path,
    ensure_engine,
    read_sidecar_for,
    remove_engine,
)

if TYPE_CHECKING:
    from pipeline.config import ModelConfig
    from pipeline.models.calibration import CalibrationBatches
    from pipeline.models.resolve import ResolvedModel

log = logging.getLogger(__name__)

INSTALL_HINT = "tensorrt/pycuda not installed: pip install 'lookout[tensorrt]' on a GPU host with CUDA"
DEFAULT_CACHE_DIR = Path("data/engines")
DEFAULT_WORKSPACE_MB = 2048
CALIB_BATCH = 8  # calibration batch; fewer when there are fewer images


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX file or build an engine from it."""


class EngineLoadError(RuntimeError):
    """A serialized engine could not be deserialized (damaged, or for another TensorRT/GPU)."""


def _load_trt() -> tuple[Any, Any]:
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f"{INSTALL_HINT} (import failed: {exc})") from None
    return trt, cuda


_TRT_LOGGER: Any = None


def _trt_logger(trt: Any) -> Any:
    """One TensorRT logger per process (TensorRT warns when builders and runtimes get different ones)."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None or _TRT_LOGGER[0] is not trt:
        _TRT_LOGGER = (trt, trt.Logger(trt.Logger.WARNING))
    return _TRT_LOGGER[1]


class _Gpu:
    """Device `index` and its primary CUDA context (the one TensorRT's runtime API uses too)."""

    def __init__(self, cuda: Any, index: int = 0):
        self._cuda = cuda
        try:
            cuda.init()
            count = cuda.Device.count()
            if count <= index:
                raise BackendUnavailable(f"no CUDA device {index}: pycuda sees {count} device(s)")
            self.device = cuda.Device(index)
            self.name = str(self.device.name())
            self.compute_capability = ".".join(map(str, self.device.compute_capability()))
            self._ctx = self.device.retain_primary_context()
        except cuda.Error as exc:
            raise BackendUnavailable(f"CUDA is not usable here: {exc}") from None

    @contextlib.contextmanager
    def active(self):
        """Make the context current on this thread for the duration."""
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def release(self) -> None:
        if self._ctx is not None:
            self._ctx.detach()
            self._ctx = None


def _check_precision(precision: Any) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def _check_max_batch(max_batch: Any) -> int:
    if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or not 1 <= max_batch <= 1024:
        raise ValueError(f"max_batch must be an integer in 1..1024, got {max_batch!r}")
    return int(max_batch)


def _read_onnx_input(onnx_path: str | Path) -> tuple[str, int | None]:
    """(input name, fixed square side or None when dynamic) of an (N,3,S,S) ONNX model."""
    import onnx

    from pipeline.models.darknet import ModelFileError

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"onnx_path: ONNX model not found: {path} (build it with `lookout convert`)")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf raises several types for a damaged file
        raise ModelFileError(f"ONNX model {path} cannot be read: {exc}") from None
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelFileError(f"ONNX model {path} must have one input (N,3,S,S), has {[i.name for i in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (3, None):
        raise ModelFileError(f"ONNX model {path}: input {inputs[0].name!r} must be (N,3,S,S), got {dims}")
    h, w = dims[2], dims[3]
    if h is None or w is None:
        return inputs[0].name, None
    if h != w:
        raise ModelFileError(
            f"ONNX model {path}: the TensorRT backend takes square inputs only, this one is "
            f"{w}x{h} (width x height); leave model.input_height_px unset or pick "
            f"model.backend onnxruntime, openvino or torch"
        )
    return inputs[0].name, int(h)


def onnx_input(onnx_path: str | Path, input_size_px: int | None = None) -> tuple[str, int]:
    """(input tensor name, square input side) of an (N,3,S,S) ONNX model.

    A fixed side in the file wins and must agree with `input_size_px` when that is given; a dynamic
    side needs `input_size_px`.
    """
    name, side = _read_onnx_input(onnx_path)
    if side is not None:
        if input_size_px is not None and input_size_px != side:
            raise ValueError(
                f"input_size_px={input_size_px} does not match the ONNX model's input side {side} ({onnx_path})"
            )
        return name, side
    if input_size_px is None:
        raise ValueError(f"input_size_px is required: ONNX model {onnx_path} has a dynamic height/width")
    if (
        isinstance(input_size_px, bool)
        or not isinstance(input_size_px, int)
        or input_size_px < 32
        or input_size_px % 32
    ):
        raise ValueError(f"input_size_px must be a positive multiple of 32, got {input_size_px!r}")
    return name, input_size_px


def coco_annotations_near(images_dir: str | Path | None) -> Path | None:
    """`instances.json` in or beside an images folder (the coco-mini layout), if there is one."""
    if images_dir is None:
        return None
    folder = Path(images_dir)
    for candidate in (folder / "instances.json", folder.parent / "instances.json"):
        if candidate.is_file():
            return candidate
    return None


def build_engine(
    onnx_path: str | Path,
    precision: str = "fp16",
    max_batch: int = 1,
    calib_images: str | Path | None = None,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    input_size_px: int | None = None,
    *,
    eval_annotations: str | Path | None = None,
    eval_images: str | Path | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    force: bool = False,
    lock_timeout_s: float | None = None,
    letter_box: bool | str = "auto",
) -> Path:
    """The cached engine for this ONNX file, precision, max batch, TensorRT version and GPU; built
    (once per node, under a file lock) when missing.

    The optimization profile covers batch 1..max_batch (opt = max = max_batch). int8 calibrates on
    `calib_images` (required) and keeps the calibration cache next to the engine. With
    `eval_annotations` (COCO JSON; images from `eval_images`, default `calib_images`) the new engine's
    mAP@0.5 is compared with ONNX Runtime FP32 and an engine losing more than allowed (int8: 1.5
    points, fp16: 0.5) is rejected with AccuracyError and not cached. `force` rebuilds.
    Calibration and the accuracy check fit images to the input as `letter_box` says (model.letter_box;
    'auto': the ONNX model's recorded flag), as the detector will at inference.
    """
    from pipeline.models.calibration import CalibrationBatches, list_images
    from pipeline.models.onnx_export import load_graph_info, sha256_file
    from pipeline.models.yolo import resolve_letter_box

    onnx_path = Path(onnx_path)
    precision = _check_precision(precision)
    max_batch = _check_max_batch(max_batch)
    input_name, size = onnx_input(onnx_path, input_size_px)
    model_letter_box = load_graph_info(onnx_path)["letter_box"]
    fit_letter_box = resolve_letter_box(letter_box, model_letter_box)
    batches = None
    if precision == "int8":
        if calib_images is None:
            raise ValueError(
                "precision 'int8' needs calibration images: set model.calib_images "
                "(lookout build-engine --calib-images DIR) to a folder of real .jpg/.png images"
            )
        n = len(list_images(calib_images))
        batches = CalibrationBatches(calib_images, size, batch_size=min(CALIB_BATCH, n), letter_box=fit_letter_box)
    gate: tuple[Path, Path] | None = None  # (images, annotations) of the accuracy check
    if eval_annotations is not None:
        annotations = Path(eval_annotations)
        if not annotations.is_file():
            raise FileNotFoundError(f"eval_annotations: COCO annotations file not found: {annotations}")
        images = eval_images if eval_images is not None else calib_images
        if images is None:
            raise ValueError("eval_images is required with eval_annotations (or give calib_images)")
        if not Path(images).is_dir():
            raise FileNotFoundError(f"eval_images: images folder not found: {images} (needed with eval_annotations)")
        gate = (Path(images), annotations)
    trt, cuda = _load_trt()
    gpu = _Gpu(cuda)
    try:
        with gpu.active():
            key = EngineKey(
                onnx_sha256=sha256_file(onnx_path),
                trt_version=str(trt.__version__),
                gpu_name=gpu.name,
                precision=precision,
                max_batch=max_batch,
                input_size_px=size,
                calib=batches.fingerprint() if batches else "",
            )
            cache_dir = Path(cache_dir)
            if force and remove_engine(cache_dir, key, lock_timeout_s):
                log.info("force: removed cached engine %s", key.filename)

            def build(tmp: Path) -> dict:
                info = _build(
                    trt,
                    gpu,
                    onnx_path,
                    input_name,
                    key,
                    tmp,
                    batches,
                    calibration_cache_path(cache_dir, key),
                    workspace_mb,
                    gate,
                    fit_letter_box,
                )
                return {**info, "model_letter_box": model_letter_box}

            return ensure_engine(key, cache_dir, build, lock_timeout_s=lock_timeout_s)
    finally:
        gpu.release()


def _build(
    trt: Any,
    gpu: _Gpu,
    onnx_path: Path,
    input_name: str,
    key: EngineKey,
    out: Path,
    batches: "CalibrationBatches | None",
    calib_cache: Path,
    workspace_mb: int,
    gate: tuple[Path, Path] | None,
    letter_box: bool,
) -> dict:
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse ONNX model {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    chw = (3, key.input_size_px, key.input_size_px)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, *chw), (key.max_batch, *chw), (key.max_batch, *chw))
    config.add_optimization_profile(profile)
    if key.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 layers without int8 kernels fall back to fp16
    calibrator = None
    if key.precision == "int8":
        from pipeline.models.calibration import make_entropy_calibrator

        config.set_flag(trt.BuilderFlag.INT8)
        assert batches is not None  # build_engine calibrates every int8 build
        calibrator = make_entropy_calibrator(batches, calib_cache)
        config.int8_calibrator = calibrator
        calib_profile = builder.create_optimization_profile()
        fixed = (batches.batch_size, *chw)
        calib_profile.set_shape(input_name, fixed, fixed, fixed)
        config.set_calibration_profile(calib_profile)
    log.info(
        "building TensorRT %s engine for %s (batch 1..%d, %dpx) on %s",
        key.precision,
        onnx_path.name,
        key.max_batch,
        key.input_size_px,
        gpu.name,
    )
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        calib_cache.unlink(missing_ok=True)
        raise EngineBuildError(
            f"TensorRT failed to build a {key.precision} engine from {onnx_path} "
            f"(max_batch={key.max_batch}); see the TensorRT log above"
        )
    with open(out, "wb") as f:
        f.write(memoryview(serialized))
    del serialized, config, parser, network, builder  # free the builder's memory before the accuracy check
    info: dict[str, Any] = {
        "onnx": str(onnx_path),
        "input": input_name,
        "workspace_mb": workspace_mb,
        "profile": {"min": 1, "opt": key.max_batch, "max": key.max_batch},
        "compute_capability": gpu.compute_capability,
    }
    if batches is not None:
        info["calibration"] = {
            "images_dir": str(batches.images_dir),
            "images": batches.num_images,
            "batch_size": batches.batch_size,
            "batches": len(batches),
            "cache": calib_cache.name,
            "letter_box": batches.letter_box,
        }
    if gate is not None:
        info["accuracy"] = _accuracy_gate(out, onnx_path, key, *gate, calib_cache, letter_box)
    return info


def _accuracy_gate(
    engine_file: Path,
    onnx_path: Path,
    key: EngineKey,
    images: Path,
    annotations: Path,
    calib_cache: Path,
    letter_box: bool,
) -> dict:
    """Compare the fresh engine with ORT FP32; an engine that loses too much is never cached."""
    from pipeline.detector import Detector
    from pipeline.models.accuracy import AccuracyError, check_accuracy, compare_backends, eval_settings
    from pipeline.models.labels import load_labels

    backend = TensorRTBackend(engine_file, precision=key.precision)
    try:
        candidate = Detector(
            backend,
            load_labels(None),
            eval_settings(
                onnx_path, key.input_size_px, backend="tensorrt", precision=key.precision, letter_box=letter_box
            ),
        )
        report = compare_backends(onnx_path, candidate, images, annotations, key.precision, batch_size=key.max_batch)
    finally:
        backend.close()
    try:
        check_accuracy(report.reference_map50, report.candidate_map50, key.precision)
    except AccuracyError as exc:
        calib_cache.unlink(missing_ok=True)  # a rebuild must calibrate afresh, not reuse these scales
        raise AccuracyError(
            f"{exc}; engine for {onnx_path.name} rejected and not cached "
            f"(evaluated on {images} with {annotations.name})"
        ) from None
    return {k: v for k, v in report.as_dict().items() if k not in ("reference", "candidate")}


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine: page-locked host buffers, one CUDA stream, async copies;
    batches larger than the engine's profile are split into chunks."""

    name = "tensorrt"

    @classmethod
    def unavailable(cls) -> str | None:
        missing = [m for m in ("tensorrt", "pycuda") if importlib.util.find_spec(m) is None]
        if missing:
            return f"{' and '.join(missing)} not installed (pip install 'lookout[tensorrt]' on a GPU host)"
        return None

    @classmethod
    def create(cls, settings: "ModelConfig", model: "ResolvedModel", max_batch_size: int) -> "TensorRTBackend":
        return cls.from_model(model, settings, max_batch_size)

    def __init__(self, engine_file: str | Path, device: int = 0, precision: str | None = None):
        trt, cuda = _load_trt()
        self.precision = precision
        self._trt, self._cuda = trt, cuda
        self.engine_file = Path(engine_file)
        if not self.engine_file.is_file():
            raise FileNotFoundError(f"engine_file: TensorRT engine not found: {self.engine_file}")
        self._lock = threading.Lock()
        self._closed = False
        self._gpu = _Gpu(cuda, device)
        self._device_bufs: dict[str, Any] = {}
        try:
            with self._gpu.active():
                self._load(trt, cuda)
        except BaseException:
            self.close()
            raise

    def _load(self, trt: Any, cuda: Any) -> None:
        self._runtime = trt.Runtime(_trt_logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_file.read_bytes())
        if self.engine is None:
            raise EngineLoadError(
                f"TensorRT {trt.__version__} cannot load engine {self.engine_file} "
                f"(damaged, or built by another TensorRT version or GPU)"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 2:
            raise EngineLoadError(
                f"engine {self.engine_file} must have 1 input and 2 outputs (boxes, scores), "
                f"has inputs {inputs} and outputs {outputs}"
            )
        self._input = inputs[0]
        self._outputs = ["boxes", "scores"] if set(outputs) == {"boxes", "scores"} else outputs
        shape = tuple(self.engine.get_tensor_shape(self._input))
        if len(shape) != 4 or shape[2] <= 0 or shape[2] != shape[3]:
            raise EngineLoadError(f"engine {self.engine_file}: input {self._input!r} must be (N,3,S,S), got {shape}")
        self._size = int(shape[2])
        if shape[0] > 0:
            self.max_batch = int(shape[0])
        else:
            self.max_batch = int(tuple(self.engine.get_tensor_profile_shape(self._input, 0)[2])[0])
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineLoadError(f"cannot create an execution context for {self.engine_file} (GPU memory?)")
        self._stream = cuda.Stream()
        max_in = (self.max_batch, 3, self._size, self._size)
        if not self.context.set_input_shape(self._input, max_in):
            raise EngineLoadError(f"engine {self.engine_file} rejects input shape {max_in}")
        self._host: dict[str, np.ndarray] = {}
        for name in [self._input, *self._outputs]:
            dims = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if any(d < 0 for d in dims):
                raise EngineLoadError(f"engine {self.engine_file}: tensor {name!r} has unresolved shape {dims}")
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self._host[name] = cuda.pagelocked_empty(dims, dtype)
            self._device_bufs[name] = cuda.mem_alloc(max(1, self._host[name].nbytes))
            if not self.context.set_tensor_address(name, int(self._device_bufs[name])):
                raise EngineLoadError(f"engine {self.engine_file}: cannot bind tensor {name!r}")
        if self._host[self._input].dtype != np.float32:
            raise EngineLoadError(
                f"engine {self.engine_file}: input {self._input!r} must be float32, is {self._host[self._input].dtype}"
            )
        side = read_sidecar_for(self.engine_file) or {}
        self.letter_box = side.get("build", {}).get("model_letter_box")
        self.precision = self.precision or side.get("key", {}).get("precision", "?")
        self._describe = (
            f"tensorrt {trt.__version__} ({self.precision}, batch 1..{self.max_batch}, "
            f"{self._size}px, {self._gpu.name}) {self.engine_file.name}"
        )
        log.info("loaded %s", self._describe)

    @classmethod
    def from_model(cls, model: "ResolvedModel", settings: "ModelConfig", max_batch_size: int) -> "TensorRTBackend":
        """Build (or reuse this node's cached) engine for `model.onnx` and load it.

        int8 needs `model.calib_images`; when that folder sits beside a COCO `instances.json`, the new
        engine must also pass the accuracy check against ONNX Runtime FP32.
        """
        _load_trt()
        if settings.precision == "int8" and model.calib_images is None:
            raise ValueError(
                "model.calib_images is required for model.precision='int8': set it to a folder of "
                "real images like the cameras' (used to calibrate INT8)"
            )
        _, side = _read_onnx_input(model.onnx)
        annotations = coco_annotations_near(model.calib_images) if settings.precision == "int8" else None

        def build(force: bool = False) -> Path:
            return build_engine(
                model.onnx,
                settings.precision,
                max(1, int(max_batch_size)),
                model.calib_images,
                model.engine_cache_dir,
                None if side else settings.input_size_px,
                eval_annotations=annotations,
                letter_box=settings.letter_box,
                force=force,
            )

        path = build()
        try:
            backend = cls(path)
        except EngineLoadError as exc:
            log.warning("%s; building it again", exc)
            backend = cls(build(force=True))
        if backend.letter_box is None:  # an engine cached without its sidecar: ask the ONNX file
            from pipeline.models.onnx_export import load_graph_info

            backend.letter_box = load_graph_info(model.onnx)["letter_box"]
        return backend

    @property
    def input_size_px(self) -> int:
        return self._size

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._closed:
            raise RuntimeError(f"TensorRT backend for {self.engine_file} is closed")
        batch = np.asarray(batch)
        s = self._size
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s):
            raise ValueError(f"batch must have shape (N, 3, {s}, {s}), got {batch.shape}")
        n = batch.shape[0]
        if n == 0:
            boxes, scores = (np.zeros((0, *self._host[o].shape[1:]), np.float32) for o in self._outputs)
            return boxes, scores
        chunks = []
        with self._lock, self._gpu.active():
            for start in range(0, n, self.max_batch):
                chunks.append(self._run(batch[start : start + self.max_batch]))
        if len(chunks) == 1:
            return chunks[0]
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    def _run(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cuda, n = self._cuda, chunk.shape[0]
        host_in = self._host[self._input][:n]
        np.copyto(host_in, chunk, casting="same_kind")
        cuda.memcpy_htod_async(self._device_bufs[self._input], host_in, self._stream)
        if not self.context.set_input_shape(self._input, tuple(host_in.shape)):
            raise RuntimeError(f"engine {self.engine_file.name} rejects input shape {host_in.shape}")
        if not self.context.execute_async_v3(self._stream.handle):
            raise RuntimeError(f"TensorRT execution failed for batch of {n} ({self.engine_file.name})")
        views = []
        for name in self._outputs:
            dims = tuple(int(d) for d in self.context.get_tensor_shape(name))
            view = self._host[name].reshape(-1)[: int(np.prod(dims))].reshape(dims)
            cuda.memcpy_dtoh_async(view, self._device_bufs[name], self._stream)
            views.append(view)
        self._stream.synchronize()
        boxes, scores = (np.array(v, dtype=np.float32) for v in views)  # the engine has 2 outputs (_load)
        return boxes, scores

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            if getattr(self, "_closed", True) or not hasattr(self, "_gpu"):
                return
            self._closed = True
            with self._gpu.active():
                for buf in self._device_bufs.values():
                    buf.free()
                self._device_bufs.clear()
                self._host = {}
                for attr in ("context", "engine", "_runtime", "_stream"):
                    if hasattr(self, attr):
                        setattr(self, attr, None)
            self._gpu.release()

    def describe(self) -> str:
        return getattr(self, "_describe", f"tensorrt {self.engine_file.name}")


__all__ = [
    "CALIB_BATCH",
    "EngineBuildError",
    "EngineLoadError",
    "TensorRTBackend",
    "build_engine",
    "coco_annotations_near",
    "engine_path",
    "onnx_input",
]
