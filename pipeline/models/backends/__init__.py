"""Inference backends behind one interface, found by name, and the `auto` choice between them.

Each module here holds a base.Backend subclass that registers itself under its `name`; this package
imports them once (none imports its heavy library until it is used) and names no class itself.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from pipeline.models.backends.base import Backend, BackendUnavailable
from pipeline.models.backends.cpu_model import cpu_model_file
from pipeline.registry import import_package_modules

if TYPE_CHECKING:
    from pipeline.config import ModelConfig
    from pipeline.models.resolve import ResolvedModel

log = logging.getLogger(__name__)

AUTO_ORDER = ("tensorrt", "torch", "openvino", "onnxruntime")


def backend_class(kind: str) -> type[Backend]:
    """The Backend registered as `kind`; BackendUnavailable naming the known ones if none is."""
    import_package_modules(__name__, frozenset({"base", "cpu_model"}))
    cls = Backend.registry.get(kind)
    if cls is None:
        raise BackendUnavailable(f"unknown backend {kind!r}; known: {sorted(Backend.registry)}")
    return cls


def choose_backend(requested: str) -> str:
    """Resolve 'auto' to the first backend that can run here, logging the reasons for skipping."""
    if requested != "auto":
        reason = backend_class(requested).unavailable()
        if reason:
            raise BackendUnavailable(f"backend {requested!r} cannot run here: {reason}")
        return requested
    for kind in AUTO_ORDER:
        reason = backend_class(kind).passed_over_by_auto()
        if reason is None:
            log.info("backend auto -> %s", kind)
            return kind
        log.info("backend auto: skipping %s: %s", kind, reason)
    raise BackendUnavailable("no inference backend can run here; pip install onnxruntime")


def create_backend(settings: "ModelConfig", model: "ResolvedModel", max_batch_size: int = 1) -> Backend:
    """The backend `settings.backend` names (or `auto` picks), loaded with `model`'s files."""
    cls = backend_class(choose_backend(settings.backend))
    if cls.int8_from_onnx:
        model = dataclasses.replace(model, onnx=cpu_model_file(settings, model))
    return cls.create(settings, model, max_batch_size)


__all__ = [
    "AUTO_ORDER",
    "Backend",
    "BackendUnavailable",
    "backend_class",
    "choose_backend",
    "cpu_model_file",
    "create_backend",
]
