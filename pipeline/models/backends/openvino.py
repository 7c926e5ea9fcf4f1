"""OpenVINO backend: the same ONNX file on Intel's CPU runtime (the default on x86 CPUs)."""

from __future__ import annotations

import importlib.util
import logging
import platform
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.models.backends.base import Backend, BackendUnavailable
from pipeline.models.onnx_export import load_graph_info

if TYPE_CHECKING:
    from pipeline.config import ModelConfig
    from pipeline.models.resolve import ResolvedModel

log = logging.getLogger(__name__)

INSTALL = "pip install openvino"
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


class OpenVinoBackend(Backend):
    """Runs the ONNX graph with OpenVINO on the CPU, in FP32 like ONNX Runtime.

    `threads`: inference threads in all (0: OpenVINO's default, every core). `streams`: a batch is
    split into up to this many parts run in parallel, each on its share of the threads (1: the whole
    batch as one request on all threads, the lowest latency)."""

    name = "openvino"
    int8_from_onnx = True

    @classmethod
    def unavailable(cls) -> str | None:
        return None if importlib.util.find_spec("openvino") else "openvino is not installed (pip install openvino)"

    @classmethod
    def passed_over_by_auto(cls) -> str | None:
        machine = platform.machine()
        if machine.lower() not in X86_MACHINES:
            # OpenVINO's ARM CPU plugin exists, but ONNX Runtime is the one measured there.
            return f"not an x86 CPU ({machine}); set backend: openvino to use it anyway"
        return cls.unavailable()

    @classmethod
    def create(cls, settings: "ModelConfig", model: "ResolvedModel", max_batch_size: int) -> "OpenVinoBackend":
        return cls(model.onnx, threads=settings.intra_op_threads, streams=settings.openvino.streams)

    def __init__(self, onnx_path: str | Path, threads: int = 0, streams: int = 1):
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailable(f"openvino is not installed: {INSTALL}") from exc
        for field, value, low in (("threads", threads, 0), ("streams", streams, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"openvino {field} must be an integer >= {low}, got {value!r}")
        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path} (build it with `lookout convert`)")
        self.letter_box = load_graph_info(path)["letter_box"]
        core = ov.Core()
        model = core.read_model(str(path))
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.get_length() != 4 or shape[2].is_dynamic or shape[3].is_dynamic:
            raise ValueError(f"ONNX model {path}: input must be (N,3,H,W) with a fixed H and W, got {shape}")
        self._shape = shape[3].get_length(), shape[2].get_length()  # (width, height)
        config: dict[str, object] = {
            # Some CPUs default to bf16/f16; the detector must give ONNX Runtime's FP32 boxes.
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": streams,
            # Pinned threads fight the ingest, encoders and other replicas on the same cores.
            "ENABLE_CPU_PINNING": False,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self._requests = [self.compiled.create_infer_request() for _ in range(max(1, self.streams))]
        self._boxes, self._scores = self.compiled.output("boxes"), self.compiled.output("scores")
        self._lock = threading.Lock()  # an infer request serves one caller at a time
        self.version = ov.__version__.split("-")[0]
        if self.streams != streams:
            log.info("openvino gave %d stream(s) where %d were asked (threads %d)", self.streams, streams, self.threads)
        log.info(
            "openvino %s on CPU for %s: %d thread(s), %d stream(s)", self.version, path, self.threads, self.streams
        )

    @property
    def input_size_px(self) -> int:
        return self._shape[0]

    @property
    def input_shape_px(self) -> tuple[int, int]:
        return self._shape

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = np.array_split(batch, min(len(batch), len(self._requests))) if len(batch) > 1 else [batch]
        with self._lock:
            if len(parts) == 1:
                out = self._requests[0].infer({0: batch})  # outputs are copies (share_outputs=False)
                return out[self._boxes], out[self._scores]
            used = self._requests[: len(parts)]
            for req, part in zip(used, parts):
                req.start_async({0: part})
            for req in used:
                req.wait()
            # The requests' output tensors are reused by the next call: concatenate copies them.
            boxes = np.concatenate([req.get_tensor(self._boxes).data for req in used])
            scores = np.concatenate([req.get_tensor(self._scores).data for req in used])
        return boxes, scores

    def close(self) -> None:
        self._requests = []
        self.compiled = None

    def describe(self) -> str:
        return f"openvino {self.version} (CPU, {self.threads} thread(s), {self.streams} stream(s))"
