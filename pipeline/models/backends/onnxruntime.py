"""ONNX Runtime backend (CPU everywhere; CUDA when onnxruntime-gpu is installed)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.models.backends.base import Backend, BackendUnavailable
from pipeline.models.onnx_export import letter_box_from_metadata

if TYPE_CHECKING:
    from pipeline.config import ModelConfig
    from pipeline.models.resolve import ResolvedModel

log = logging.getLogger(__name__)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    int8_from_onnx = True

    @classmethod
    def unavailable(cls) -> str | None:
        return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed"

    @classmethod
    def create(cls, settings: "ModelConfig", model: "ResolvedModel", max_batch_size: int) -> "OnnxRuntimeBackend":
        return cls(model.onnx, intra_op_threads=settings.intra_op_threads)

    def __init__(self, onnx_path: str | Path, intra_op_threads: int = 0, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - it is a core dependency
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from exc
        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path} (build it with `lookout convert`)")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        # Spinning workers burn the CPU that ingest and encoders need between batches.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self._input = self.session.get_inputs()[0]
        self._shape = int(self._input.shape[3]), int(self._input.shape[2])  # (width, height)
        self.providers = self.session.get_providers()
        self.letter_box = letter_box_from_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        log.info("onnxruntime session for %s on %s", path, self.providers)

    @property
    def input_size_px(self) -> int:
        return self._shape[0]

    @property
    def input_shape_px(self) -> tuple[int, int]:
        return self._shape

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores = self.session.run(["boxes", "scores"], {self._input.name: batch})
        return boxes, scores

    def describe(self) -> str:
        return f"onnxruntime ({', '.join(self.providers)})"
