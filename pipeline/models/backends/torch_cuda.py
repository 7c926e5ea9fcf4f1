"""PyTorch backend: our darknet network (:mod:`pipeline.models.torch_yolo`) on CUDA, fp16 or fp32.

For x86 GPU servers that have PyTorch with CUDA but no TensorRT. `device="cpu"` is accepted
when given explicitly (tests, diagnostics); it always runs fp32.

On CUDA: cudnn.benchmark, channels-last tensors, pinned host buffers with non-blocking copies
both ways, and a warm-up at batch 1 and `max_batch_size` so the first real batch is not slow.
precision fp32 turns cuDNN's TF32 off (process-wide) so that fp32 means fp32.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.models.backends.base import Backend, BackendUnavailable
from pipeline.models.yolo import PAD_VALUE, InputFit, fit_input

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the backend reports it as BackendUnavailable
    torch = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from pipeline.config import ModelConfig
    from pipeline.models.resolve import ResolvedModel
    from pipeline.models.torch_yolo import DarknetYolo

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")


def check_device(device: str) -> "torch.device":
    """The torch device for `device`, or BackendUnavailable saying why it cannot be used here."""
    if torch is None:
        raise BackendUnavailable("backend 'torch': torch is not installed (pip install torch, a CUDA build, "
                                 "on a GPU host; or use backend onnxruntime)")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'cuda', 'cuda:N' or 'cpu', got {device!r} ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"backend 'torch' cannot run here: torch {torch.__version__} has no CUDA device "
                f"(torch.cuda.is_available() is False); use backend onnxruntime")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BackendUnavailable(f"backend 'torch': device {device!r} does not exist "
                                     f"({torch.cuda.device_count()} CUDA device(s))")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'cuda', 'cuda:N' or 'cpu', got {device!r}")
    return dev


class TorchBackend(Backend):
    """Runs a :class:`~pipeline.models.torch_yolo.DarknetYolo` on one device."""

    name = "torch"

    def __init__(self, net: "DarknetYolo", precision: str = "fp16", device: str = "cuda",
                 max_batch_size: int = 1, channels_last: bool | None = None, warmup: bool = True):
        self.device = check_device(device)
        if precision == "int8":
            raise BackendUnavailable("model.precision='int8' needs TensorRT (model.backend: tensorrt); "
                                     "the torch backend runs fp32 or fp16")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
        self.precision = precision
        self.max_batch_size = max_batch_size
        self.cuda = self.device.type == "cuda"
        self.channels_last = self.cuda if channels_last is None else bool(channels_last)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            if precision == "fp32":
                torch.backends.cudnn.allow_tf32 = False
        net = net.eval().requires_grad_(False).to(self.device)
        if precision == "fp16":
            net.set_compute_dtype(torch.float16)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self._size = net.input_size
        self.letter_box = net.cfg.letter_box
        if warmup and self.cuda:
            self.warmup(sorted({1, max_batch_size}))

    @classmethod
    def from_model(cls, model: "ResolvedModel", settings: "ModelConfig", max_batch_size: int = 1,
                   device: str | None = None) -> "TorchBackend":
        """Build from `model.cfg`+`model.weights` (else from `model.onnx`, see torch_yolo.from_onnx).

        `device` None means CUDA (BackendUnavailable without it); 'cpu' runs fp32.
        """
        dev = check_device(device or "cuda")
        from pipeline.models.torch_yolo import load_network

        started = time.perf_counter()
        net = load_network(model.onnx, model.cfg, model.weights, settings.input_size_px)
        if net.input_size != settings.input_size_px:
            log.warning("torch backend: %s is built for %d px, not model.input_size_px=%d; using %d",
                        model.onnx, net.input_size, settings.input_size_px, net.input_size)
        precision = settings.precision
        if dev.type == "cpu" and precision == "fp16":
            precision = "fp32"
        backend = cls(net, precision, str(dev), max_batch_size)
        log.info("%s ready in %.2fs", backend.describe(), time.perf_counter() - started)
        return backend

    @property
    def input_size_px(self) -> int:
        return self._size

    def warmup(self, batch_sizes: list[int]) -> None:
        """Run each batch size once (cuDNN picks its algorithms, memory gets allocated)."""
        started = time.perf_counter()
        for n in batch_sizes:
            self.infer(torch.zeros((n, 3, self._size, self._size), device=self.device))
        log.info("torch backend warm-up for batch %s took %.2fs", batch_sizes, time.perf_counter() - started)

    def _upload(self, batch: Any) -> "torch.Tensor":
        if isinstance(batch, torch.Tensor):
            x = batch.to(self.device, non_blocking=True)
        else:
            arr = np.asarray(batch)
            if arr.ndim != 4 or arr.shape[1:] != (3, self._size, self._size):
                raise ValueError(f"batch must have shape (N, 3, {self._size}, {self._size}), got {arr.shape}")
            arr = np.ascontiguousarray(arr, np.float32)
            if not arr.flags.writeable:
                arr = arr.copy()
            x = torch.from_numpy(arr)
            if self.cuda:
                host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
                host.copy_(x)
                x = host.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _download(self, *tensors: "torch.Tensor") -> list[np.ndarray]:
        if not self.cuda:
            return [t.float().numpy() for t in tensors]
        out = []
        for t in tensors:
            host = torch.empty(t.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(t, non_blocking=True)
            out.append(host)
        torch.cuda.current_stream(self.device).synchronize()
        return [h.numpy() for h in out]

    def infer(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        """(N,3,S,S) float32 RGB 0..1 (numpy, or a torch tensor e.g. from preprocess_on_device)."""
        if self.net is None:
            raise RuntimeError("the torch backend is closed")
        with torch.inference_mode():
            boxes, scores = self.net(self._upload(batch))
            boxes, scores = self._download(boxes, scores)
        return boxes, scores

    def preprocess_on_device(self, images: list[np.ndarray], *,
                             letter_box: bool) -> tuple["torch.Tensor", list[InputFit]]:
        """Fit HxWx3 uint8 BGR frames to the input on the device (stretched, or letterboxed when
        `letter_box`): (N,3,S,S) float32 RGB 0..1 there, and each frame's fit.

        Same geometry as :func:`pipeline.models.yolo.fit_image`; the resize is bilinear with half-pixel
        centres like cv2.INTER_LINEAR and is rounded to whole levels like cv2's uint8 output. cv2 uses
        11-bit fixed-point weights, so pixels differ by at most 1/255 (measured in
        tests/test_torch_backend.py); the grey padding is identical.
        """
        size = self._size
        fits: list[InputFit | None] = [None] * len(images)
        out = torch.full((len(images), 3, size, size), PAD_VALUE, dtype=torch.float32, device=self.device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"images[{i}] must be an HxWx3 uint8 BGR array, got "
                                 f"{getattr(img, 'shape', type(img))} {getattr(img, 'dtype', '')}")
            groups.setdefault(img.shape[:2], []).append(i)
        with torch.inference_mode():
            for (h, w), idx in groups.items():
                fit = fit_input(w, h, size, letter_box=letter_box)
                new_w, new_h, pad_x, pad_y = fit.resized_width_px, fit.resized_height_px, fit.pad_x_px, fit.pad_y_px
                host = torch.empty((len(idx), h, w, 3), dtype=torch.uint8, pin_memory=self.cuda)
                staged = host.numpy()
                for j, i in enumerate(idx):
                    staged[j] = images[i]
                x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).flip(1).float()
                if (new_h, new_w) != (h, w):
                    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
                    x = x.round_().clamp_(0, 255)
                target = out[idx[0]:idx[-1] + 1] if idx == list(range(idx[0], idx[-1] + 1)) else None
                if target is not None:
                    target[:, :, pad_y:pad_y + new_h, pad_x:pad_x + new_w] = x
                else:
                    for j, i in enumerate(idx):
                        out[i, :, pad_y:pad_y + new_h, pad_x:pad_x + new_w] = x[j]
                for i in idx:
                    fits[i] = fit
            out.mul_(float(np.float32(1 / 255)))
        return out, fits  # type: ignore[return-value]

    def close(self) -> None:
        self.net = None
        if self.cuda:
            torch.cuda.empty_cache()

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        return f"torch {torch.__version__} ({self.device}: {where}, {self.precision})"
