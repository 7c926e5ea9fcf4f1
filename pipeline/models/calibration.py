"""INT8 calibration data: real images, fitted to the input exactly as at inference, in fixed-size batches.

Pure numpy/OpenCV; `make_entropy_calibrator` imports TensorRT and pycuda only when called.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from pipeline.models.yolo import preprocess_batch

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_images(images_dir: str | Path, max_images: int | None = None) -> list[Path]:
    """The .jpg/.jpeg/.png files directly in `images_dir`, sorted by name (at most `max_images`)."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"calibration images folder {folder} does not exist "
            f"(calib_images: point it at a folder of real .jpg/.png images)"
        )
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images must be a positive integer or None, got {max_images!r}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(
            f"calibration images folder {folder} has no .jpg/.jpeg/.png images "
            f"(calib_images: point it at a folder of real images)"
        )
    return paths[:max_images] if max_images else paths


class CalibrationBatches:
    """Contiguous float32 (batch_size, 3, H, W) batches of real images, preprocessed with
    `pipeline.models.yolo.preprocess_batch` (stretched, or letterboxed with `letter_box`: the fit the
    detector will use, so that the INT8 scales see the same pixels as inference).

    Every batch has exactly `batch_size` images (TensorRT calibrates with one fixed shape).
    `last="pad"` (default) fills the last partial batch by wrapping around to the first images,
    so every image is seen at least once and padding is real data, never blank frames;
    `last="drop"` leaves the remainder out (an error if that leaves no batch at all).
    """

    def __init__(
        self,
        images_dir: str | Path,
        input_size_px: int | tuple[int, int],
        batch_size: int,
        max_images: int | None = None,
        last: Literal["pad", "drop"] = "pad",
        *,
        letter_box: bool,
        strip_of_px: tuple[int, int] | None = None,
    ):
        sides = input_size_px if isinstance(input_size_px, tuple) and len(input_size_px) == 2 else (input_size_px,)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sides):
            raise ValueError(
                f"input_size_px must be a positive integer or a (width, height) pair of them, got {input_size_px!r}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if last not in ("pad", "drop"):
            raise ValueError(f"last must be 'pad' or 'drop', got {last!r}")
        self.images_dir = Path(images_dir)
        self.input_size_px = input_size_px
        self.input_shape_px: tuple[int, int] = (sides[0], sides[-1])  # (width, height)
        self.batch_size = batch_size
        self.last = last
        self.letter_box = bool(letter_box)
        if strip_of_px is not None and (batch_size != 1 or strip_of_px[1] != self.input_shape_px[1]):
            raise ValueError(
                f"strip_of_px needs batch_size 1 and the strip's height, got strip_of_px={strip_of_px!r}, "
                f"batch_size={batch_size}, input {self.input_shape_px}"
            )
        self.strip_of_px = strip_of_px
        self.paths = list_images(self.images_dir, max_images)
        if last == "drop" and len(self.paths) < batch_size:
            raise ValueError(
                f"calibration images folder {self.images_dir} has {len(self.paths)} image(s), "
                f"fewer than batch_size={batch_size}, and last='drop' keeps no batch"
            )

    @property
    def num_images(self) -> int:
        return len(self.paths)

    def __len__(self) -> int:
        n, b = len(self.paths), self.batch_size
        return -(-n // b) if self.last == "pad" else n // b

    @property
    def batch_shape(self) -> tuple[int, int, int, int]:
        width, height = self.input_shape_px
        return (self.batch_size, 3, height, width)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.batch_shape)) * np.dtype(np.float32).itemsize

    def batch_paths(self) -> list[list[Path]]:
        """The image files of each batch, in order (wrap-around padding included)."""
        n, b = len(self.paths), self.batch_size
        out = []
        for i in range(len(self)):
            idx = [(i * b + j) % n for j in range(b)]
            out.append([self.paths[k] for k in idx])
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for paths in self.batch_paths():
            if self.strip_of_px is not None:
                for strip in self.inputs(paths[0]):
                    batch, _ = preprocess_batch([strip], self.input_shape_px, letter_box=self.letter_box)
                    yield np.ascontiguousarray(batch, dtype=np.float32)
                continue
            images = [self._read(p) for p in paths]
            batch, _ = preprocess_batch(images, self.input_shape_px, letter_box=self.letter_box)
            yield np.ascontiguousarray(batch, dtype=np.float32)

    def inputs(self, path: Path) -> list[np.ndarray]:
        """What the model is fed of one image: the image; or, for a strip model (`strip_of_px`: the full
        model's input), the image fitted to the full model and cut into a left, a middle and a right strip
        of this model's width, as pipeline.regions cuts frames."""
        image = self._read(path)
        if self.strip_of_px is None:
            return [image]
        full, _ = preprocess_batch([image], self.strip_of_px, letter_box=self.letter_box)
        fitted = np.ascontiguousarray((full[0].transpose(1, 2, 0)[:, :, ::-1] * 255.0).round().astype(np.uint8))
        width, full_w = self.input_shape_px[0], self.strip_of_px[0]
        return [fitted[:, x : x + width] for x in sorted({0, (full_w - width) // 2, full_w - width})]

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"calibration image {path} cannot be read as an image")
        return image

    def fingerprint(self) -> str:
        """sha256 over the images' names and bytes and the batching; changes when the set does."""
        width, height = self.input_shape_px
        size = f"{width}" if width == height else f"{width}x{height}"
        strip = "" if self.strip_of_px is None else f"/strip{self.strip_of_px[0]}x{self.strip_of_px[1]}"
        h = hashlib.sha256(f"s{size}/b{self.batch_size}/{self.last}/lb{int(self.letter_box)}{strip}".encode())
        for p in self.paths:
            h.update(p.name.encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
        return h.hexdigest()

    def __repr__(self) -> str:
        return (
            f"CalibrationBatches({str(self.images_dir)!r}, images={len(self.paths)}, "
            f"batch_size={self.batch_size}, batches={len(self)}, last={self.last!r}, letter_box={self.letter_box})"
        )


def make_entropy_calibrator(batches: CalibrationBatches, cache_path: str | Path) -> Any:
    """A `tensorrt.IInt8EntropyCalibrator2` feeding `batches` through one device buffer.

    Imports tensorrt and pycuda here; call it with a CUDA context current (as the builder is).
    The calibration cache is read from / written (atomically) to `cache_path`.
    """
    from pipeline.models.backends.base import BackendUnavailable
    from pipeline.models.engine_cache import atomic_write_bytes

    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(
            "tensorrt/pycuda not installed: pip install 'lookout[tensorrt]' on a GPU host "
            f"with CUDA (INT8 calibration needs them; import failed: {exc})"
        ) from None

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = batches
            self.cache_path = Path(cache_path)
            self._iter: Iterator[np.ndarray] | None = None
            self._device: Any = None  # pycuda DeviceAllocation, once the first batch comes
            self._count = 0

        def get_batch_size(self) -> int:
            return batches.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._iter is None:
                self._iter = iter(batches)
            try:
                batch = next(self._iter)
            except StopIteration:
                self.free()
                return None
            if self._device is None:
                self._device = cuda.mem_alloc(batches.nbytes)
            cuda.memcpy_htod(self._device, batch)
            self._count += 1
            log.info("calibration batch %d/%d", self._count, len(batches))
            return [int(self._device)]

        def read_calibration_cache(self) -> bytes | None:
            if self.cache_path.is_file():
                log.info("using calibration cache %s", self.cache_path)
                return self.cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(self.cache_path, bytes(cache))
            log.info("calibration cache written to %s", self.cache_path)

        def free(self) -> None:
            if self._device is not None:
                self._device.free()
                self._device = None

    return EntropyCalibrator()


__all__ = ["CalibrationBatches", "IMAGE_SUFFIXES", "list_images", "make_entropy_calibrator"]
