"""Darknet YOLOv4 / YOLOv4-tiny as a `torch.nn.Module` (no torchvision), from cfg + weights or our ONNX file.

The module computes exactly what :mod:`pipeline.models.onnx_export` puts in the ONNX graph:
batch-norm folded with darknet's eps, the same activations, maxpool padding, routes, shortcuts,
nearest upsampling and YOLO decoding (``scale_x_y``), and the same order of the B boxes (yolo
layers in cfg order, cells row by row, the anchors of a cell adjacent).

``forward(images (N,3,S,S) RGB 0..1) -> boxes (N,B,4) xyxy in input pixels, scores (N,B,C)``.
The YOLO heads always decode in float32; :meth:`DarknetYolo.set_compute_dtype` changes only the
convolutional body (fp16 on CUDA).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.darknet import (
    ConvParams,
    DarknetConfig,
    ModelFileError,
    Section,
    conv_geometry,
    infer_shapes,
    maxpool_geometry,
    param_layout,
    parse_cfg,
    read_weights,
    route_inputs,
    shortcut_input,
    yolo_anchors,
)
from pipeline.models.onnx_export import BN_EPS, _fold_conv, input_shape, load_graph_info, sha256_file

log = logging.getLogger(__name__)

ACTIVATIONS = ("linear", "leaky", "mish", "logistic", "relu", "swish", "silu")
FoldedConv = tuple[np.ndarray, np.ndarray]


def _activate(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "linear":
        return x
    if act == "leaky":
        return F.leaky_relu(x, 0.1)
    if act == "logistic":
        return torch.sigmoid(x)
    if act == "relu":
        return F.relu(x)
    if act == "mish":
        return F.mish(x)
    return F.silu(x)  # swish / silu


def _check_activation(sec: Section, default: str) -> str:
    act = sec.getstr("activation", default)
    if act not in ACTIVATIONS:
        raise sec.error(f"activation={act} is not supported (linear, leaky, mish, logistic, relu, swish)")
    return act


class YoloHead(nn.Module):
    """Decodes one [yolo] layer's (N, A*(5+C), H, W) map into boxes (N, H*W*A, 4) and scores (N, H*W*A, C)."""

    offset: torch.Tensor  # buffers (register_buffer), declared for the type checker
    half_anchor: torch.Tensor
    xy_scale: torch.Tensor

    def __init__(self, sec: Section, grid_h: int, grid_w: int, input_w: int, input_h: int):
        super().__init__()
        anchors, mask = yolo_anchors(sec)
        self.classes = sec.getint("classes", 20)
        scale = sec.getfloat("scale_x_y", 1.0)
        if sec.getint("new_coords", 0):
            raise sec.error("new_coords=1 (Scaled-YOLOv4 decoding) is not supported")
        a = self.anchors = len(mask)
        self.grid_h, self.grid_w = grid_h, grid_w
        self.num_boxes = grid_h * grid_w * a
        stride_y, stride_x = input_h / grid_h, input_w / grid_w
        gy, gx, _ = np.meshgrid(np.arange(grid_h), np.arange(grid_w), np.arange(a), indexing="ij")
        shift = (scale - 1) / 2
        offset = np.stack([(gx.ravel() - shift) * stride_x, (gy.ravel() - shift) * stride_y], -1)
        half_anchor = np.tile(np.array([anchors[m] for m in mask], np.float64) / 2, (grid_h * grid_w, 1))
        xy_scale = np.array([scale * stride_x, scale * stride_y], np.float32)
        # Constants rounded to float32 exactly as the ONNX initializers are.
        self.register_buffer("offset", torch.from_numpy(offset[None].astype(np.float32)), persistent=False)
        self.register_buffer("half_anchor", torch.from_numpy(half_anchor[None].astype(np.float32)), persistent=False)
        self.register_buffer("xy_scale", torch.from_numpy(xy_scale), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        t = x.float().reshape(n, self.anchors, 5 + self.classes, self.grid_h, self.grid_w)
        t = t.permute(0, 3, 4, 1, 2).reshape(n, self.num_boxes, 5 + self.classes)
        txy, twh, tobj, tcls = t.split([2, 2, 1, self.classes], dim=2)
        xy = torch.sigmoid(txy) * self.xy_scale.float() + self.offset.float()
        half = torch.exp(twh) * self.half_anchor.float()
        return torch.cat([xy - half, xy + half], 2), torch.sigmoid(tobj) * torch.sigmoid(tcls)


class DarknetYolo(nn.Module):
    """A darknet YOLO network with folded conv parameters ``{layer index: (weight, bias)}``."""

    def __init__(self, cfg: DarknetConfig, convs: Mapping[int, FoldedConv], input_size: int | tuple[int, int] = 416):
        super().__init__()
        self.input_shape = width, height = input_shape(input_size)
        self.input_size = width
        if cfg.channels != 3:
            raise ModelFileError(
                f"{cfg.source}: channels={cfg.channels} in [net]; only 3-channel (RGB) networks are supported"
            )
        shapes = infer_shapes(cfg, width, height)
        self.cfg = cfg
        self.convs = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self._plan: list[tuple] = []
        yolo_layers: set[int] = set()
        refs_needed: set[int] = set()
        in_c = cfg.channels

        def ref(i: int, by: Section) -> int:
            if i in yolo_layers:
                raise by.error(f"refers to [yolo] layer {i}, which is not supported")
            refs_needed.add(i)
            return i

        for i, sec in enumerate(cfg.layers):
            key = str(i)
            if sec.type in ("convolutional", "conv"):
                filters, ksize, stride, padding, groups = conv_geometry(sec)
                if i not in convs:
                    raise ModelFileError(f"no weights for conv layer {i} ({sec.where()})")
                w, b = convs[i]
                want = (filters, in_c // groups, ksize, ksize)
                if tuple(w.shape) != want or tuple(b.shape) != (filters,):
                    raise ModelFileError(
                        f"conv layer {i} ({sec.where()}): weights of shape {tuple(w.shape)} "
                        f"and bias {tuple(b.shape)}, the cfg needs {want} and ({filters},)"
                    )
                conv = nn.Conv2d(in_c, filters, ksize, stride, padding, groups=groups, bias=True)
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(np.array(w, np.float32)))
                    assert conv.bias is not None  # bias=True
                    conv.bias.copy_(torch.from_numpy(np.array(b, np.float32)))
                conv.requires_grad_(False)
                self.convs[key] = conv
                self._plan.append(("conv", key, _check_activation(sec, "logistic")))
            elif sec.type in ("maxpool", "max"):
                ksize, stride, padding = maxpool_geometry(sec)
                self._plan.append(("maxpool", ksize, stride, padding // 2, padding - padding // 2))
            elif sec.type == "route":
                groups, group_id = sec.getint("groups", 1), sec.getint("group_id", 0)
                parts = []
                for r in route_inputs(cfg, i):
                    chunk = shapes[r].c // groups
                    parts.append((ref(r, sec), group_id * chunk, (group_id + 1) * chunk, groups > 1))
                self._plan.append(("route", parts))
            elif sec.type == "shortcut":
                if sec.has("weights_type") and sec.getstr("weights_type") != "none":
                    raise sec.error("weighted shortcuts (weights_type) are not supported")
                self._plan.append(("shortcut", ref(shortcut_input(cfg, i), sec), _check_activation(sec, "linear")))
            elif sec.type == "upsample":
                self._plan.append(("upsample", sec.getint("stride", 2), sec.getfloat("scale", 1.0)))
            elif sec.type == "yolo":
                head = YoloHead(sec, shapes[i].h, shapes[i].w, width, height)
                self.heads[key] = head
                yolo_layers.add(i)
                self._plan.append(("yolo", key))
            else:  # infer_shapes has rejected anything else already
                raise sec.error(f"layer type [{sec.type}] is not supported")
            in_c = shapes[i].c

        if not self.heads:
            raise ModelFileError(f"{cfg.source}: the cfg has no [yolo] layer")
        heads = [h for h in self.heads.values() if isinstance(h, YoloHead)]
        classes = {h.classes for h in heads}
        if len(classes) != 1:
            raise ModelFileError(f"{cfg.source}: [yolo] layers disagree on classes: {sorted(classes)}")
        self.num_classes = classes.pop()
        self.num_boxes = sum(h.num_boxes for h in heads)
        self._keep = frozenset(refs_needed)
        self.compute_dtype = torch.float32

    def set_compute_dtype(self, dtype: torch.dtype) -> "DarknetYolo":
        """Run the convolutional body in `dtype` (e.g. torch.float16); heads and outputs stay float32."""
        self.compute_dtype = dtype
        for conv in self.convs.values():
            conv.to(dtype)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        width, height = self.input_shape
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != height or x.shape[3] != width:
            raise ValueError(f"images must have shape (N, 3, {height}, {width}), got {tuple(x.shape)}")
        x = x.to(self.compute_dtype)
        saved: dict[int, torch.Tensor] = {}
        boxes, scores = [], []
        for i, step in enumerate(self._plan):
            kind = step[0]
            if kind == "conv":
                x = _activate(self.convs[step[1]](x), step[2])
            elif kind == "maxpool":
                _, k, s, before, after = step
                if k == 1 and s == 1:
                    pass
                elif before == after:
                    x = F.max_pool2d(x, k, s, before)
                else:
                    x = F.max_pool2d(F.pad(x, (before, after, before, after), value=float("-inf")), k, s)
            elif kind == "route":
                parts = [saved[r][:, lo:hi] if sliced else saved[r] for r, lo, hi, sliced in step[1]]
                x = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            elif kind == "shortcut":
                x = _activate(x + saved[step[1]], step[2])
            elif kind == "upsample":
                x = F.interpolate(x, scale_factor=step[1], mode="nearest")
                if step[2] != 1.0:
                    x = x * step[2]
            else:  # yolo: passes its input through, like the ONNX graph
                b, s_ = self.heads[step[1]](x)
                boxes.append(b)
                scores.append(s_)
            if i in self._keep:
                saved[i] = x
        if len(boxes) == 1:
            return boxes[0], scores[0]
        return torch.cat(boxes, 1), torch.cat(scores, 1)


def fold_weights(weights: Mapping[int, ConvParams], bn_eps: float = BN_EPS) -> dict[int, FoldedConv]:
    """Batch-norm folded into each conv, exactly as the ONNX export folds it."""
    return {i: _fold_conv(p, bn_eps) for i, p in weights.items()}


def from_darknet(
    cfg_path: str | Path, weights_path: str | Path, input_size: int | tuple[int, int] = 416, bn_eps: float = BN_EPS
) -> DarknetYolo:
    """Build the network from a darknet .cfg and .weights file."""
    cfg = parse_cfg(cfg_path)
    return DarknetYolo(cfg, fold_weights(read_weights(weights_path, cfg).layers, bn_eps), input_size)


def _find_source_cfg(onnx_path: Path, info: dict) -> Path | None:
    name, sha = info.get("source_cfg"), info.get("cfg_sha256")
    if not name or not sha:
        return None
    candidate = onnx_path.parent / Path(name).name
    return candidate if candidate.is_file() and sha256_file(candidate) == sha else None


def from_onnx(onnx_path: str | Path, cfg_path: str | Path | None = None) -> DarknetYolo:
    """Build the network from our ONNX export: its folded conv initializers plus the darknet cfg.

    The cfg is `cfg_path`, or the file the ONNX metadata names (``source_cfg``) when it lies next
    to the ONNX file with the recorded sha256; without either this raises ModelFileError.
    """
    import onnx
    from onnx import numpy_helper

    onnx_path = Path(onnx_path)
    info = load_graph_info(onnx_path)
    size = info.get("input_size")
    if not isinstance(size, int):
        raise ModelFileError(
            f"ONNX model {onnx_path} has no lookout.input_size metadata: it was not made by "
            f"`lookout convert`; the torch backend needs model.cfg and model.weights"
        )
    if cfg_path is None:
        cfg_path = _find_source_cfg(onnx_path, info)
        if cfg_path is None:
            raise ModelFileError(
                f"the torch backend needs the darknet cfg of ONNX model {onnx_path}: set model.cfg and "
                f"model.weights (its metadata names source_cfg={info.get('source_cfg')!r}, not found next to "
                f"it with sha256 {info.get('cfg_sha256')!r})"
            )
    cfg = parse_cfg(cfg_path)
    model = onnx.load(str(onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    convs: dict[int, FoldedConv] = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        try:
            index = int(node.name.split("_", 1)[0].lstrip("l"))
            w, b = (numpy_helper.to_array(inits[n]) for n in node.input[1:3])
        except (ValueError, KeyError, IndexError):
            raise ModelFileError(
                f"ONNX model {onnx_path}: conv node {node.name!r} is not laid out as "
                f"`lookout convert` writes it; use model.cfg and model.weights"
            ) from None
        convs[index] = (w, b)
    expected = {i for i, _, _ in param_layout(cfg)}
    if set(convs) != expected:
        raise ModelFileError(
            f"ONNX model {onnx_path} does not belong to cfg {cfg_path}: conv layers "
            f"{sorted(set(convs) ^ expected)[:10]} differ"
        )
    net = DarknetYolo(cfg, convs, (size, info.get("input_height", size)))
    if info.get("num_boxes") not in (None, net.num_boxes) or info.get("num_classes") not in (None, net.num_classes):
        raise ModelFileError(
            f"ONNX model {onnx_path} ({info.get('num_boxes')} boxes, {info.get('num_classes')} "
            f"classes) does not match cfg {cfg_path} ({net.num_boxes}, {net.num_classes})"
        )
    return net


def load_network(
    onnx_path: str | Path | None,
    cfg_path: str | Path | None = None,
    weights_path: str | Path | None = None,
    input_size: int | tuple[int, int] = 416,
) -> DarknetYolo:
    """From cfg + weights when both are given, else from the ONNX file (see :func:`from_onnx`)."""
    if cfg_path is not None and weights_path is not None:
        return from_darknet(cfg_path, weights_path, input_size)
    if onnx_path is None:
        raise ModelFileError("the torch backend needs model.cfg and model.weights, or model.onnx")
    return from_onnx(onnx_path, cfg_path)
