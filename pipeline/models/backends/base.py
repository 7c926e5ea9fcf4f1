"""The interface every inference backend implements."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from pipeline.config import ModelConfig
    from pipeline.models.resolve import ResolvedModel


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (library missing, no GPU); the message says what to install."""


class Backend(abc.ABC):
    """Runs the YOLO graph: (N,3,H,W) float32 RGB in [0,1] -> boxes (N,B,4), scores (N,B,C).

    A subclass that defines `create` is registered under its `name` (`model.backend`); the package finds
    the subclasses in its modules and asks each whether it can run here and to create itself from the config.
    """

    name: str = "base"
    # Runs `precision: int8` from a quantized copy of the ONNX file (backends.cpu_model), handed in as model.onnx.
    int8_from_onnx: ClassVar[bool] = False
    registry: ClassVar[dict[str, type["Backend"]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "create" in cls.__dict__:  # buildable from the config (wrappers and test fakes are not)
            Backend.registry[cls.name] = cls

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this backend cannot run here (library missing, no GPU), or None if it might."""
        return None

    @classmethod
    def passed_over_by_auto(cls) -> str | None:
        """Why `backend: auto` skips it here (asked for by name it may still run), or None."""
        return cls.unavailable()

    @classmethod
    def create(cls, settings: "ModelConfig", model: "ResolvedModel", max_batch_size: int) -> "Backend":
        """The backend for this model and config, loaded (a class that defines it is registered under its name)."""
        raise NotImplementedError(f"{cls.__name__} is not built from a config")

    # The model's own [net] letter_box (from its cfg or ONNX metadata); None when it does not say.
    letter_box: bool | None = None

    @property
    @abc.abstractmethod
    def input_size_px(self) -> int:
        """The network input's width (its side, for a square model)."""

    @property
    def input_shape_px(self) -> tuple[int, int]:
        """(width, height) of the network input; backends of rectangular models override it."""
        return self.input_size_px, self.input_size_px

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None:
        """Free what the backend holds."""

    def describe(self) -> str:
        return self.name
