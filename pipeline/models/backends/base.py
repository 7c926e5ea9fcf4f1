"""The interface every inference backend implements."""
from __future__ import annotations

import abc

import numpy as np


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (library missing, no GPU); the message says what to install."""


class Backend(abc.ABC):
    """Runs the YOLO graph: (N,3,H,W) float32 RGB in [0,1] -> boxes (N,B,4), scores (N,B,C)."""

    name: str = "base"
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
