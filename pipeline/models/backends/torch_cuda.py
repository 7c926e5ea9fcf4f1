"""PyTorch backend: our darknet network (:mod:`pipeline.models.torch_yolo`) on CUDA, fp16 or fp32.

For x86 GPU servers that have PyTorch with CUDA but no TensorRT. `device="cpu"` is accepted
when given explicitly (tests, diagnostics); it always runs fp32.

On CUDA: cudnn.benchmark, channels-last tensors, pinned host buffers with non-blocking copies
both ways, and a warm-up at batch 1 and `max_batch_size` so the first real batch is not slow.
precision fp32 turns cuDNN's TF32 off (process-wide) so that fp32 means fp32.

:meth:`TorchBackend.detect_encoded` is the whole path from bus JPEG bytes to Detections with the
pixels on the device: batched decode (torchvision.io.decode_jpeg, nvJPEG on CUDA), fit and
normalisation, inference, class-wise NMS (torchvision.ops.batched_nms); only the kept boxes come
back to the host. Where torchvision's compiled ops cannot load (a CUDA torchvision wheel next to
CPU torch, as on the CI box) the JPEGs are decoded with OpenCV on the host and NMS runs as an exact
greedy NMS in torch; everything else is the same code.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import time
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from pipeline.models.backends.base import Backend, BackendUnavailable
from pipeline.models.yolo import PAD_VALUE, InputFit, fit_input
from pipeline.types import Detections

try:
    import torch
except ImportError:  # the backend reports it as BackendUnavailable
    torch = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from pipeline.config import ModelConfig
    from pipeline.models.resolve import ResolvedModel
    from pipeline.models.torch_yolo import DarknetYolo

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
JPEG_MAGIC = b"\xff\xd8"
RESIZE_SCALE = 2048  # cv2's INTER_RESIZE_COEF_SCALE (11 bits)


@functools.cache
def torchvision_ops() -> Any:
    """torchvision when its compiled ops (decode_jpeg, nms) load with this torch, else None."""
    try:
        import torchvision
        import torchvision.io  # noqa: F401

        torchvision.ops.nms(torch.zeros((1, 4)), torch.ones(1), 0.5)
        return torchvision
    except Exception as exc:  # noqa: BLE001 - a CUDA wheel on CPU torch raises RuntimeError/OSError, not ImportError
        log.info(
            "torchvision cannot be used here (%s: %s); JPEGs are decoded on the host and NMS runs in plain torch",
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        return None


def linear_weights(src: int, dst: int) -> tuple[np.ndarray, ...]:
    """cv2.INTER_LINEAR's source indices and 11-bit weights for `dst` samples of `src` (half-pixel
    centres, clamped at the edges): (first, second: int64; weight of first, of second: int32)."""
    pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
    first = np.floor(pos).astype(np.int64)
    frac = pos - first
    frac[first < 0], first[first < 0] = 0, 0
    last = first >= src - 1
    frac[last], first[last] = 0, src - 1
    w0 = np.round((1 - frac) * RESIZE_SCALE).astype(np.int32)
    return (first, np.minimum(first + 1, src - 1), w0, (RESIZE_SCALE - w0).astype(np.int32))


def _box_iou(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    wh = (torch.minimum(a[:, None, 2:], b[None, :, 2:]) - torch.maximum(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def greedy_batched_nms(
    boxes: "torch.Tensor", scores: "torch.Tensor", groups: "torch.Tensor", iou_threshold: float
) -> "torch.Tensor":
    """Indices kept by greedy NMS within each group, best score first: what
    torchvision.ops.batched_nms returns, in plain torch (its stand-in where torchvision cannot load)."""
    order = torch.argsort(scores, descending=True, stable=True)
    b, g = boxes[order], groups[order]
    suppresses = ((_box_iou(b, b) > iou_threshold) & (g[:, None] == g[None, :])).triu(1).cpu().numpy()
    keep = np.ones(len(order), bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= ~suppresses[i, i + 1 :]
    return order[torch.from_numpy(np.flatnonzero(keep)).to(order.device)]


def check_device(device: str) -> "torch.device":
    """The torch device for `device`, or BackendUnavailable saying why it cannot be used here."""
    if torch is None:
        raise BackendUnavailable(
            "backend 'torch': torch is not installed (pip install torch, a CUDA build, "
            "on a GPU host; or use backend onnxruntime)"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'cuda', 'cuda:N' or 'cpu', got {device!r} ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"backend 'torch' cannot run here: torch {torch.__version__} has no CUDA device "
                f"(torch.cuda.is_available() is False); use backend onnxruntime"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BackendUnavailable(
                f"backend 'torch': device {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s))"
            )
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'cuda', 'cuda:N' or 'cpu', got {device!r}")
    return dev


class TorchBackend(Backend):
    """Runs a :class:`~pipeline.models.torch_yolo.DarknetYolo` on one device."""

    name = "torch"

    @classmethod
    def unavailable(cls) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        import torch

        return None if torch.cuda.is_available() else "torch has no CUDA device"

    @classmethod
    def create(cls, settings: "ModelConfig", model: "ResolvedModel", max_batch_size: int) -> "TorchBackend":
        return cls.from_model(model, settings, max_batch_size)

    def __init__(
        self,
        net: "DarknetYolo",
        precision: str = "fp16",
        device: str = "cuda",
        max_batch_size: int = 1,
        channels_last: bool | None = None,
        warmup: bool = True,
    ):
        self.device = check_device(device)
        if precision == "int8":
            raise BackendUnavailable(
                "model.precision='int8' needs TensorRT (model.backend: tensorrt); the torch backend runs fp32 or fp16"
            )
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
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes it
        self.net: DarknetYolo | None = net
        self._shape = net.input_shape  # (width, height)
        self.letter_box = net.cfg.letter_box
        self._resize_weights: dict[tuple[int, int], tuple["torch.Tensor", ...]] = {}
        if warmup and self.cuda:
            self.warmup(sorted({1, max_batch_size}))

    @classmethod
    def from_model(
        cls, model: "ResolvedModel", settings: "ModelConfig", max_batch_size: int = 1, device: str | None = None
    ) -> "TorchBackend":
        """Build from `model.cfg`+`model.weights` (else from `model.onnx`, see torch_yolo.from_onnx).

        `device` None means CUDA (BackendUnavailable without it); 'cpu' runs fp32.
        """
        dev = check_device(device or "cuda")
        from pipeline.models.torch_yolo import load_network

        started = time.perf_counter()
        net = load_network(model.onnx, model.cfg, model.weights, settings.input_shape_px)
        if net.input_shape != settings.input_shape_px:
            log.warning(
                "torch backend: %s is built for %dx%d px, not the model settings' %dx%d; using %dx%d",
                model.onnx,
                *net.input_shape,
                *settings.input_shape_px,
                *net.input_shape,
            )
        precision = settings.precision
        if dev.type == "cpu" and precision == "fp16":
            precision = "fp32"
        backend = cls(net, precision, str(dev), max_batch_size)
        log.info("%s ready in %.2fs", backend.describe(), time.perf_counter() - started)
        return backend

    @property
    def input_size_px(self) -> int:
        return self._shape[0]

    @property
    def input_shape_px(self) -> tuple[int, int]:
        return self._shape

    def warmup(self, batch_sizes: list[int]) -> None:
        """Run each batch size once (cuDNN picks its algorithms, memory gets allocated)."""
        started = time.perf_counter()
        for n in batch_sizes:
            self.infer(torch.zeros((n, 3, self._shape[1], self._shape[0]), device=self.device))
        log.info("torch backend warm-up for batch %s took %.2fs", batch_sizes, time.perf_counter() - started)

    def _upload(self, batch: Any) -> "torch.Tensor":
        if isinstance(batch, torch.Tensor):
            x = batch.to(self.device, non_blocking=True)
        else:
            arr = np.asarray(batch)
            width, height = self._shape
            if arr.ndim != 4 or arr.shape[1:] != (3, height, width):
                raise ValueError(f"batch must have shape (N, 3, {height}, {width}), got {arr.shape}")
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

    def preprocess_on_device(
        self, images: list[np.ndarray], *, letter_box: bool
    ) -> tuple["torch.Tensor", list[InputFit]]:
        """Fit HxWx3 uint8 BGR frames to the input on the device (stretched, or letterboxed when
        `letter_box`): (N,3,S,S) float32 RGB 0..1 there, and each frame's fit.

        Same geometry as :func:`pipeline.models.yolo.fit_image`; the resize repeats cv2.INTER_LINEAR's
        fixed-point arithmetic (see :meth:`_resize`), so pixels equal cv2's at the usual sizes and
        differ by at most 1/255 at a few (measured in tests/test_torch_backend.py); the grey
        padding is identical.
        """
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(
                    f"images[{i}] must be an HxWx3 uint8 BGR array, got "
                    f"{getattr(img, 'shape', type(img))} {getattr(img, 'dtype', '')}"
                )
            groups.setdefault(img.shape[:2], []).append(i)
        out, fits = self._canvas(len(images))
        with torch.inference_mode():
            for (h, w), idx in groups.items():
                host = torch.empty((len(idx), h, w, 3), dtype=torch.uint8, pin_memory=self.cuda)
                staged = host.numpy()
                for j, i in enumerate(idx):
                    staged[j] = images[i]
                x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).flip(1)
                self._place(out, fits, idx, x, letter_box)
            out.mul_(float(np.float32(1 / 255)))
        return out, fits  # type: ignore[return-value]

    def _canvas(self, n: int) -> tuple["torch.Tensor", list[InputFit | None]]:
        width, height = self._shape
        return torch.full((n, 3, height, width), PAD_VALUE, dtype=torch.float32, device=self.device), [None] * n

    def _place(
        self, out: "torch.Tensor", fits: list[InputFit | None], idx: list[int], x: "torch.Tensor", letter_box: bool
    ) -> None:
        """Fit (n,3,h,w) uint8 RGB images `x` into `out[idx]` (0..255 floats), recording their fit."""
        h, w = x.shape[2], x.shape[3]
        fit = fit_input(w, h, self._shape, letter_box=letter_box)
        new_w, new_h, pad_x, pad_y = fit.resized_width_px, fit.resized_height_px, fit.pad_x_px, fit.pad_y_px
        x = self._resize(x, new_w, new_h).float() if (new_h, new_w) != (h, w) else x.float()
        if idx == list(range(idx[0], idx[-1] + 1)):
            out[idx[0] : idx[-1] + 1, :, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = x
        else:
            for j, i in enumerate(idx):
                out[i, :, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = x[j]
        for i in idx:
            fits[i] = fit

    def _weights(self, src: int, dst: int) -> tuple["torch.Tensor", ...]:
        key = (src, dst)
        if key not in self._resize_weights:
            self._resize_weights[key] = tuple(torch.from_numpy(a).to(self.device) for a in linear_weights(src, dst))
        return self._resize_weights[key]

    def _resize(self, x: "torch.Tensor", new_w: int, new_h: int) -> "torch.Tensor":
        """(n,3,h,w) uint8 resized like cv2.resize(INTER_LINEAR) on uint8: its 11-bit fixed-point
        weights and the rounding of its SIMD vertical pass, so the pixels equal OpenCV's (the host
        path's) instead of differing by a grey level here and there (which moved scores by 1e-2)."""
        x0, x1, cx0, cx1 = self._weights(x.shape[3], new_w)
        y0, y1, cy0, cy1 = self._weights(x.shape[2], new_h)
        xi = x.to(torch.int32)
        rows = xi[..., x0] * cx0 + xi[..., x1] * cx1
        top, bottom = rows[:, :, y0] >> 4, rows[:, :, y1] >> 4
        out = (((cy0[:, None] * top) >> 16) + ((cy1[:, None] * bottom) >> 16) + 2) >> 2
        return out.clamp_(0, 255).to(torch.uint8)

    def decode_on_device(self, jpegs: list[bytes]) -> list["torch.Tensor"]:
        """Each JPEG as a (3,H,W) uint8 RGB tensor on the device: one batched
        torchvision.io.decode_jpeg call (nvJPEG on CUDA), or OpenCV on the host where torchvision
        cannot load."""
        for i, data in enumerate(jpegs):
            if not isinstance(data, (bytes, bytearray, memoryview)) or bytes(data[:2]) != JPEG_MAGIC:
                raise ValueError(
                    f"jpegs[{i}] must be JPEG bytes (starting FF D8), got "
                    f"{type(data).__name__} starting {bytes(data[:4]).hex() if data else 'empty'}"
                )
        tv = torchvision_ops()
        if tv is not None:
            encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
            return list(tv.io.decode_jpeg(encoded, mode=tv.io.ImageReadMode.RGB, device=self.device))
        out = []
        for i, data in enumerate(jpegs):
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"jpegs[{i}]: could not decode {len(data)} bytes as a JPEG")
            out.append(
                torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))).to(
                    self.device, non_blocking=True
                )
            )
        return out

    def fit_decoded(self, images: list["torch.Tensor"], *, letter_box: bool) -> tuple["torch.Tensor", list[InputFit]]:
        """(3,H,W) uint8 RGB tensors on the device fitted like :meth:`preprocess_on_device`."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault((int(img.shape[1]), int(img.shape[2])), []).append(i)
        out, fits = self._canvas(len(images))
        with torch.inference_mode():
            for idx in groups.values():
                self._place(out, fits, idx, torch.stack([images[i] for i in idx]), letter_box)
            out.mul_(float(np.float32(1 / 255)))
        return out, fits  # type: ignore[return-value]

    def postprocess_on_device(
        self,
        boxes: "torch.Tensor",
        scores: "torch.Tensor",
        fits: list[InputFit],
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int = 300,
        class_ids: np.ndarray | None = None,
    ) -> list[Detections]:
        """:func:`pipeline.models.yolo.postprocess` of every image of the batch at once on the device
        (one class-wise NMS over the batch, boxes mapped to source pixels there); only the kept
        boxes are copied to the host."""
        n, _, c = scores.shape
        if class_ids is not None:
            mask = torch.zeros(c, dtype=torch.bool, device=scores.device)
            mask[torch.as_tensor(np.asarray(class_ids), device=scores.device)] = True
            scores = scores * mask
        frame, box, cls = torch.nonzero(scores > conf_threshold, as_tuple=True)
        conf = scores[frame, box, cls]
        cand = boxes[frame, box]
        tv = torchvision_ops()
        groups = frame * c + cls
        keep = (
            tv.ops.batched_nms(cand, conf, groups, iou_threshold)
            if tv is not None
            else greedy_batched_nms(cand, conf, groups, iou_threshold)
        )
        kept_frame = frame[keep]
        by_frame = torch.argsort(kept_frame, stable=True)  # best first within each frame still
        keep, kept_frame = keep[by_frame], kept_frame[by_frame]
        counts = torch.bincount(kept_frame, minlength=n)
        rank = torch.arange(len(keep), device=keep.device) - (torch.cumsum(counts, 0) - counts)[kept_frame]
        keep, kept_frame = keep[rank < max_detections], kept_frame[rank < max_detections]
        geo = torch.tensor(
            [[f.pad_x_px, f.pad_y_px, f.scale_x, f.scale_y, f.src_width_px, f.src_height_px] for f in fits],
            dtype=torch.float32,
        ).to(cand.device, non_blocking=True)[kept_frame]
        xyxy = (cand[keep] - geo[:, [0, 1, 0, 1]]) / geo[:, [2, 3, 2, 3]]
        xyxy = torch.minimum(xyxy.clamp(min=0), geo[:, [4, 5, 4, 5]])
        xyxy_np, kept_conf, kept_cls, counts_np = (
            t.cpu().numpy() for t in (xyxy, conf[keep], cls[keep], torch.bincount(kept_frame, minlength=n))
        )
        out, start = [], 0
        for k in counts_np.tolist():
            end = start + k
            out.append(
                Detections(
                    xyxy=xyxy_np[start:end].astype(np.float32),
                    confidence=kept_conf[start:end],
                    class_id=kept_cls[start:end],
                )
                if k
                else Detections.empty()
            )
            start = end
        return out

    def detect_encoded(
        self,
        jpegs: list[bytes],
        *,
        letter_box: bool,
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int = 300,
        class_ids: np.ndarray | None = None,
    ) -> tuple[list[Detections], list[tuple[int, int]], dict[str, float]]:
        """JPEG bytes to Detections in their images' pixels, with the decoded (width, height) of
        each and the seconds per stage (preprocess = decode + fit)."""
        if self.net is None:
            raise RuntimeError("the torch backend is closed")
        sync = torch.cuda.synchronize if self.cuda else (lambda *_: None)
        t0 = time.perf_counter()
        with torch.inference_mode():
            decoded = self.decode_on_device(jpegs)
            x, fits = self.fit_decoded(decoded, letter_box=letter_box)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            sync(self.device)
            t1 = time.perf_counter()
            boxes, scores = self.net(x)
            sync(self.device)
            t2 = time.perf_counter()
            dets = self.postprocess_on_device(
                boxes, scores, fits, conf_threshold, iou_threshold, max_detections, class_ids
            )
        t3 = time.perf_counter()
        sizes = [(f.src_width_px, f.src_height_px) for f in fits]
        return dets, sizes, {"preprocess_s": t1 - t0, "infer_s": t2 - t1, "postprocess_s": t3 - t2}

    def close(self) -> None:
        self.net = None
        if self.cuda:
            torch.cuda.empty_cache()

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        return f"torch {torch.__version__} ({self.device}: {where}, {self.precision})"
