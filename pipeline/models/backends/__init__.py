"""Inference backends behind one interface, and the `auto` choice between them."""
from __future__ import annotations

import importlib.util
import logging
import platform
from typing import TYPE_CHECKING

from pipeline.models.backends.base import Backend, BackendUnavailable

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.config import ModelConfig
    from pipeline.models.resolve import ResolvedModel

log = logging.getLogger(__name__)

AUTO_ORDER = ("tensorrt", "torch", "openvino", "onnxruntime")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


def _gpu_reason(kind: str) -> str | None:
    """Why `kind` cannot run here, or None if it might."""
    if kind == "onnxruntime":
        return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed"
    if kind == "openvino":
        return None if importlib.util.find_spec("openvino") else "openvino is not installed (pip install openvino)"
    if kind == "tensorrt":
        missing = [m for m in ("tensorrt", "pycuda") if importlib.util.find_spec(m) is None]
        if missing:
            return f"{' and '.join(missing)} not installed (pip install 'lookout[tensorrt]' on a GPU host)"
        return None
    if kind == "torch":
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        import torch

        return None if torch.cuda.is_available() else "torch has no CUDA device"
    return f"unknown backend {kind!r}"


def _auto_reason(kind: str) -> str | None:
    """Why `auto` passes over `kind` here, or None if it may pick it."""
    if kind == "openvino":
        machine = platform.machine()
        if machine.lower() not in X86_MACHINES:
            # OpenVINO's ARM CPU plugin exists, but ONNX Runtime is the one measured there.
            return f"not an x86 CPU ({machine}); set backend: openvino to use it anyway"
    return _gpu_reason(kind)


def choose_backend(requested: str) -> str:
    """Resolve 'auto' to the first backend that can run here, logging the reasons for skipping."""
    if requested != "auto":
        reason = _gpu_reason(requested)
        if reason:
            raise BackendUnavailable(f"backend {requested!r} cannot run here: {reason}")
        return requested
    for kind in AUTO_ORDER:
        reason = _auto_reason(kind)
        if reason is None:
            log.info("backend auto -> %s", kind)
            return kind
        log.info("backend auto: skipping %s: %s", kind, reason)
    raise BackendUnavailable("no inference backend can run here; pip install onnxruntime")


def create_backend(settings: "ModelConfig", model: "ResolvedModel", max_batch_size: int = 1) -> Backend:
    """The backend `settings.backend` names (or `auto` picks), loaded with `model`'s files."""
    kind = choose_backend(settings.backend)
    if kind == "onnxruntime":
        from pipeline.models.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(cpu_model_file(settings, model), intra_op_threads=settings.intra_op_threads)
    if kind == "openvino":
        from pipeline.models.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(cpu_model_file(settings, model), threads=settings.intra_op_threads,
                               streams=settings.openvino_streams)
    if kind == "tensorrt":
        from pipeline.models.backends.tensorrt import TensorRTBackend

        return TensorRTBackend.from_model(model, settings, max_batch_size)
    if kind == "torch":
        from pipeline.models.backends.torch_cuda import TorchBackend

        return TorchBackend.from_model(model, settings, max_batch_size)
    raise BackendUnavailable(f"unknown backend {kind!r}")


def cpu_model_file(settings: "ModelConfig", model: "ResolvedModel") -> "Path":
    """The ONNX file a CPU backend loads: the model's own, or with `precision: int8` its quantized copy
    (pipeline.models.quantize). An INT8 model that fails its check against FP32 is not used: the
    detector runs FP32 and says why (the camera keeps its detections)."""
    if settings.precision != "int8":
        return model.onnx
    from pipeline.models.quantize import QuantizationError, ensure_int8

    try:
        q = ensure_int8(model.onnx, settings.calib_images, settings.engine_cache_dir, letter_box=settings.letter_box,
                        conf_threshold=settings.conf_threshold, iou_threshold=settings.nms_iou_threshold)
    except QuantizationError as exc:
        log.error("model.precision int8 not used, running FP32: %s", exc)
        return model.onnx
    log.info("INT8 model %s (finds %.1f %% of FP32's detections on %d calibration images)", q.path,
             100 * q.agreement, q.images)
    return q.path


__all__ = ["Backend", "BackendUnavailable", "choose_backend", "cpu_model_file", "create_backend"]
