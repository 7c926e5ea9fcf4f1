"""The detector core: images in, Detections out, through a backend (no Ray here)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pipeline.frames import decode_frame, rescale_detections
from pipeline.config import ModelConfig
from pipeline.models.backends import Backend, create_backend
from pipeline.models.labels import load_labels
from pipeline.models.resolve import ResolvedModel
from pipeline.models.yolo import postprocess, preprocess_batch, resolve_letter_box
from pipeline.types import Detections

log = logging.getLogger(__name__)


class Detector:
    """Fit a batch to the network input (stretch or letterbox, as the model was trained), run the
    backend once, and post-process each image."""

    def __init__(self, backend: Backend, labels: list[str], settings: ModelConfig):
        self.backend = backend
        self.labels = labels
        self.settings = settings
        self.letter_box = resolve_letter_box(settings.letter_box, backend.letter_box)
        recorded = "no letter_box flag" if backend.letter_box is None else f"letter_box={int(backend.letter_box)}"
        log.info(
            "detector input: %s to %dx%d px (model.letter_box=%s; the model records %s)",
            "letterbox" if self.letter_box else "stretch",
            *self.input_shape_px,
            settings.letter_box,
            recorded,
        )
        self.class_ids: np.ndarray | None = None
        if settings.classes:
            unknown = [c for c in settings.classes if c not in labels]
            if unknown:
                raise ValueError(f"model.classes has labels the model does not know: {unknown}")
            self.class_ids = np.array([labels.index(c) for c in settings.classes])

    @classmethod
    def from_config(
        cls,
        settings: ModelConfig,
        model: ResolvedModel | str | Path,
        labels_path: str | Path | None = None,
        max_batch_size: int = 1,
    ) -> "Detector":
        """Load the backend for `model` (a ResolvedModel, or just an ONNX path)."""
        if not isinstance(model, ResolvedModel):
            model = ResolvedModel(onnx=Path(model), labels=Path(labels_path) if labels_path else None)
        backend = create_backend(settings, model, max_batch_size)
        return cls(backend, load_labels(labels_path or model.labels), settings)

    @property
    def input_size_px(self) -> int:
        """The network input's width (its side, for a square model)."""
        return self.backend.input_size_px

    @property
    def input_shape_px(self) -> tuple[int, int]:
        """(width, height) of the network input."""
        return self.backend.input_shape_px

    def detect(
        self, images: list[np.ndarray], source_sizes: list[tuple[int, int] | None] | None = None
    ) -> tuple[list[Detections], dict[str, float]]:
        """Detections per image, and the seconds spent per stage for the whole batch.

        `source_sizes[i]`, when not None, is the (width, height) image i was scaled down from:
        its boxes are then given in those pixels."""
        if not images:
            return [], {}
        if source_sizes is not None and len(source_sizes) != len(images):
            raise ValueError(f"source_sizes has {len(source_sizes)} entries for {len(images)} images")
        t0 = time.perf_counter()
        on_device = getattr(self.backend, "preprocess_on_device", None)  # the torch backend's, on CUDA
        if on_device is not None and getattr(self.backend, "cuda", False):  # resize there: upload uint8
            batch, fits = on_device(images, letter_box=self.letter_box)
        else:
            batch, fits = preprocess_batch(images, self.input_shape_px, letter_box=self.letter_box)
        t1 = time.perf_counter()
        boxes, scores = self.backend.infer(batch)
        t2 = time.perf_counter()
        s = self.settings
        out = [
            postprocess(
                boxes[i], scores[i], fits[i], s.conf_threshold, s.nms_iou_threshold, s.max_detections, self.class_ids
            )
            for i in range(len(images))
        ]
        if source_sizes is not None:
            out = [
                d if size is None else rescale_detections(d, (img.shape[1], img.shape[0]), size)
                for d, img, size in zip(out, images, source_sizes)
            ]
        t3 = time.perf_counter()
        return out, {"preprocess_s": t1 - t0, "infer_s": t2 - t1, "postprocess_s": t3 - t2}

    def detect_encoded(
        self, payloads: list[bytes], source_sizes: list[tuple[int, int] | None] | None = None
    ) -> tuple[list[Detections], dict[str, float]]:
        """:meth:`detect` for frames as the bus carries them (JPEG bytes, or raw frames).

        A backend with `detect_encoded` (torch) takes JPEGs straight to the device: decode, fit,
        inference and NMS there. Other backends, or any raw payload in the batch: decoded on the
        host, then :meth:`detect`."""
        if not payloads:
            return [], {}
        if source_sizes is not None and len(source_sizes) != len(payloads):
            raise ValueError(f"source_sizes has {len(source_sizes)} entries for {len(payloads)} payloads")
        on_device = getattr(self.backend, "detect_encoded", None)
        if on_device is None or any(bytes(p[:2]) != b"\xff\xd8" for p in payloads):
            t0 = time.perf_counter()
            images = [decode_frame(p) for p in payloads]
            t1 = time.perf_counter()
            out, timings = self.detect(images, source_sizes)
            timings["preprocess_s"] = timings.get("preprocess_s", 0.0) + t1 - t0
            return out, timings
        s = self.settings
        out, sizes, timings = on_device(
            payloads,
            letter_box=self.letter_box,
            conf_threshold=s.conf_threshold,
            iou_threshold=s.nms_iou_threshold,
            max_detections=s.max_detections,
            class_ids=self.class_ids,
        )
        if source_sizes is not None:
            t0 = time.perf_counter()
            out = [
                d if size is None else rescale_detections(d, wh, size) for d, wh, size in zip(out, sizes, source_sizes)
            ]
            timings["postprocess_s"] += time.perf_counter() - t0
        return out, timings
