"""Backends are found by name: each registers itself; the package that picks one names no class."""

from __future__ import annotations

from typing import get_args

import pytest

from pipeline.config import ModelConfig
from pipeline.models.backends import AUTO_ORDER, BackendUnavailable, backend_class
from pipeline.models.backends.base import Backend
from pipeline.models.backends.onnxruntime import OnnxRuntimeBackend


def test_every_backend_the_config_allows_is_registered_under_its_name():
    names = [n for n in get_args(ModelConfig.model_fields["backend"].annotation) if n != "auto"]
    assert sorted(names) == sorted(AUTO_ORDER)
    for name in names:
        cls = backend_class(name)
        assert issubclass(cls, Backend) and cls.name == name
    assert backend_class("onnxruntime") is OnnxRuntimeBackend
    assert backend_class("onnxruntime").unavailable() is None  # a core dependency


def test_an_unknown_backend_is_refused_naming_the_known_ones():
    with pytest.raises(BackendUnavailable, match=r"unknown backend 'tflite'; known: \['onnxruntime', 'openvino'"):
        backend_class("tflite")


def test_a_wrapper_without_create_is_not_registered_and_still_runs():
    class Wrapper(Backend):  # as tests and benchmarks wrap a real backend
        name = "wrapped"

        @property
        def input_size_px(self) -> int:
            return 416

        def infer(self, batch):
            return batch, batch

    assert "wrapped" not in Backend.registry
    assert Wrapper().input_size_px == 416
    with pytest.raises(NotImplementedError, match="Wrapper is not built from a config"):
        Wrapper.create(ModelConfig(onnx="m.onnx"), None, 1)  # type: ignore[arg-type]
