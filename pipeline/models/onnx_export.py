"""Darknet cfg + weights → ONNX detection graph, built with `onnx.helper` (no torch).

Graph contract:

- input ``images``: float32 [N, 3, S, S], RGB, 0..1, fitted by the caller as the cfg's
  ``[net] letter_box`` says (stretched to S x S by default, letterboxed with 1), which the
  model records in its metadata (``lookout.letter_box``, see :func:`letter_box_from_metadata`);
- output ``boxes``: float32 [N, B, 4], x1, y1, x2, y2 in network-input pixels (0..S; not
  clipped, so boxes of objects cut by the border reach a little beyond);
- output ``scores``: float32 [N, B, C], objectness * class probability.

B counts every anchor of every [yolo] layer: the yolo layers in cfg order, and within one
layer the cells row by row with the anchors of a cell adjacent (the order OpenCV uses).
Batch-norm is folded into the convolutions. Metadata (input size, classes, name, sha256 of
the source files, letter_box) is stored in the model's metadata_props; see :func:`load_graph_info`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.models.darknet import (
    ConvParams,
    DarknetConfig,
    ModelFileError,
    Section,
    conv_geometry,
    infer_shapes,
    maxpool_geometry,
    missing_file_error,
    parse_cfg,
    read_weights,
    route_inputs,
    shortcut_input,
    yolo_anchors,
)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 13
MIN_OPSET = 13
CONVERTER_VERSION = "2"  # 2: records the cfg's letter_box
BN_EPS = 1e-5  # darknet: (x - mean) / sqrt(var + .00001f)
INPUT_NAME, BOXES_NAME, SCORES_NAME = "images", "boxes", "scores"
_META_PREFIX = "lookout."
LETTER_BOX_KEY = _META_PREFIX + "letter_box"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_input_size(input_size: Any) -> int:
    if (
        isinstance(input_size, bool)
        or not isinstance(input_size, (int, np.integer))
        or input_size < 32
        or input_size % 32
    ):
        raise ValueError(f"input_size must be a positive multiple of 32, got {input_size!r}")
    return int(input_size)


def input_shape(input_size: Any) -> tuple[int, int]:
    """(width, height) of a network input given as one side (square) or a (width, height) pair,
    each a positive multiple of 32."""
    if isinstance(input_size, (tuple, list)):
        if len(input_size) != 2:
            raise ValueError(f"input_size must be a side or a (width, height) pair, got {input_size!r}")
        try:
            return _check_input_size(input_size[0]), _check_input_size(input_size[1])
        except ValueError:
            raise ValueError(
                f"input_size (width, height) must be positive multiples of 32, got {tuple(input_size)!r}"
            ) from None
    side = _check_input_size(input_size)
    return side, side


def _check_opset(opset: Any) -> int:
    top = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= top:
        raise ValueError(f"opset must be an integer in {MIN_OPSET}..{top}, got {opset!r}")
    return int(opset)


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def name(self, base: str) -> str:
        n, k = base, 1
        while n in self._names:
            k += 1
            n = f"{base}_{k}"
        self._names.add(n)
        return n

    def const(self, base: str, value: np.ndarray) -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), n))
        return n

    def op(self, op_type: str, inputs: list[str], base: str, n_out: int = 1, **attrs: Any) -> Any:
        outs = [self.name(base if n_out == 1 else f"{base}_{i}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs


def _activation(g: _GraphBuilder, x: str, act: str, base: str, sec: Section) -> str:
    if act == "linear":
        return x
    if act == "leaky":
        return g.op("LeakyRelu", [x], f"{base}_leaky", alpha=0.1)
    if act == "logistic":
        return g.op("Sigmoid", [x], f"{base}_sigmoid")
    if act == "relu":
        return g.op("Relu", [x], f"{base}_relu")
    if act == "mish":
        sp = g.op("Softplus", [x], f"{base}_softplus")
        return g.op("Mul", [x, g.op("Tanh", [sp], f"{base}_tanh")], f"{base}_mish")
    if act in ("swish", "silu"):
        return g.op("Mul", [x, g.op("Sigmoid", [x], f"{base}_sigmoid")], f"{base}_swish")
    raise sec.error(f"activation={act} is not supported (linear, leaky, mish, logistic, relu, swish)")


def _fold_conv(p: ConvParams, eps: float) -> tuple[np.ndarray, np.ndarray]:
    w = p.weights.astype(np.float64)
    b = p.biases.astype(np.float64)
    if p.scales is not None:  # batch-normalized: the layer has its statistics
        assert p.rolling_mean is not None and p.rolling_var is not None
        k = p.scales.astype(np.float64) / np.sqrt(p.rolling_var.astype(np.float64) + eps)
        w = w * k[:, None, None, None]
        b = b - p.rolling_mean.astype(np.float64) * k
    return w.astype(np.float32), b.astype(np.float32)


def _yolo_head(
    g: _GraphBuilder, x: str, sec: Section, base: str, grid_h: int, grid_w: int, input_w: int, input_h: int
) -> tuple[str, str, int]:
    anchors, mask = yolo_anchors(sec)
    classes = sec.getint("classes", 20)
    scale = sec.getfloat("scale_x_y", 1.0)
    if sec.getint("new_coords", 0):
        raise sec.error("new_coords=1 (Scaled-YOLOv4 decoding) is not supported")
    a = len(mask)
    n = grid_h * grid_w * a
    t = g.op(
        "Reshape", [x, g.const(f"{base}_shape5", np.array([0, a, 5 + classes, grid_h, grid_w], np.int64))], f"{base}_r5"
    )
    t = g.op("Transpose", [t], f"{base}_nhwac", perm=[0, 3, 4, 1, 2])
    t = g.op("Reshape", [t, g.const(f"{base}_shape3", np.array([0, n, 5 + classes], np.int64))], f"{base}_rows")
    txy, twh, tobj, tcls = g.op(
        "Split", [t, g.const(f"{base}_split", np.array([2, 2, 1, classes], np.int64))], f"{base}_part", n_out=4, axis=2
    )
    stride_y, stride_x = input_h / grid_h, input_w / grid_w
    gy, gx, _ = np.meshgrid(np.arange(grid_h), np.arange(grid_w), np.arange(a), indexing="ij")
    shift = (scale - 1) / 2
    offset = np.stack([(gx.ravel() - shift) * stride_x, (gy.ravel() - shift) * stride_y], -1)
    half_anchor = np.tile(np.array([anchors[m] for m in mask], np.float64) / 2, (grid_h * grid_w, 1))
    xy_scale = np.array([scale * stride_x, scale * stride_y], np.float32)
    xy = g.op("Mul", [g.op("Sigmoid", [txy], f"{base}_sxy"), g.const(f"{base}_xyscale", xy_scale)], f"{base}_xys")
    xy = g.op("Add", [xy, g.const(f"{base}_grid", offset[None].astype(np.float32))], f"{base}_cxy")
    half = g.op(
        "Mul",
        [g.op("Exp", [twh], f"{base}_ewh"), g.const(f"{base}_anchors", half_anchor[None].astype(np.float32))],
        f"{base}_halfwh",
    )
    boxes = g.op(
        "Concat",
        [g.op("Sub", [xy, half], f"{base}_xy1"), g.op("Add", [xy, half], f"{base}_xy2")],
        f"{base}_boxes",
        axis=2,
    )
    scores = g.op(
        "Mul", [g.op("Sigmoid", [tobj], f"{base}_obj"), g.op("Sigmoid", [tcls], f"{base}_cls")], f"{base}_scores"
    )
    return boxes, scores, classes


def build_model(
    cfg: DarknetConfig,
    weights: dict[int, ConvParams],
    input_size: int | tuple[int, int] = 416,
    opset: int = DEFAULT_OPSET,
    model_name: str | None = None,
    metadata: dict[str, str] | None = None,
    bn_eps: float = BN_EPS,
) -> onnx.ModelProto:
    """Build the ONNX model of a parsed cfg and its conv parameters (by layer index).

    `input_size` is a side (square) or (width, height). `bn_eps` is darknet's 1e-5
    (`sqrt(var + eps)`); OpenCV's darknet importer uses 1e-6.
    """
    width, height = input_shape(input_size)
    opset = _check_opset(opset)
    if cfg.channels != 3:
        raise ModelFileError(
            f"{cfg.source}: channels={cfg.channels} in [net]; only 3-channel (RGB) networks are supported"
        )
    shapes = infer_shapes(cfg, width, height)
    g = _GraphBuilder()
    g.name(INPUT_NAME)
    outputs: list[str] = []
    heads: list[tuple[str, str]] = []
    classes_seen: set[int] = set()
    yolo_layers: set[int] = set()
    prev = INPUT_NAME

    def ref(i: int, by: Section) -> str:
        if i in yolo_layers:
            raise by.error(f"refers to [yolo] layer {i}, which is not supported")
        return outputs[i]

    for i, sec in enumerate(cfg.layers):
        base = f"l{i:03d}_{sec.type}"
        if sec.type in ("convolutional", "conv"):
            filters, ksize, stride, padding, groups = conv_geometry(sec)
            if i not in weights:
                raise ModelFileError(f"no weights for conv layer {i} ({sec.where()})")
            w, b = _fold_conv(weights[i], bn_eps)
            out = g.op(
                "Conv",
                [prev, g.const(f"{base}_W", w), g.const(f"{base}_B", b)],
                base,
                kernel_shape=[ksize, ksize],
                strides=[stride, stride],
                pads=[padding] * 4,
                group=groups,
            )
            out = _activation(g, out, sec.getstr("activation", "logistic"), base, sec)
        elif sec.type in ("maxpool", "max"):
            ksize, stride, padding = maxpool_geometry(sec)
            before, after = padding // 2, padding - padding // 2
            if ksize == 1 and stride == 1:
                out = prev
            else:
                out = g.op(
                    "MaxPool",
                    [prev],
                    base,
                    kernel_shape=[ksize, ksize],
                    strides=[stride, stride],
                    pads=[before, before, after, after],
                )
        elif sec.type == "route":
            groups, group_id = sec.getint("groups", 1), sec.getint("group_id", 0)
            parts = []
            for r in route_inputs(cfg, i):
                src = ref(r, sec)
                if groups > 1:
                    chunk = shapes[r].c // groups
                    src = g.op(
                        "Slice",
                        [
                            src,
                            g.const(f"{base}_starts", np.array([group_id * chunk], np.int64)),
                            g.const(f"{base}_ends", np.array([(group_id + 1) * chunk], np.int64)),
                            g.const(f"{base}_axes", np.array([1], np.int64)),
                        ],
                        f"{base}_slice",
                    )
                parts.append(src)
            out = parts[0] if len(parts) == 1 else g.op("Concat", parts, base, axis=1)
        elif sec.type == "shortcut":
            if sec.has("weights_type") and sec.getstr("weights_type") != "none":
                raise sec.error("weighted shortcuts (weights_type) are not supported")
            out = g.op("Add", [prev, ref(shortcut_input(cfg, i), sec)], base)
            out = _activation(g, out, sec.getstr("activation", "linear"), base, sec)
        elif sec.type == "upsample":
            stride = sec.getint("stride", 2)
            scales = g.const(f"{base}_scales", np.array([1, 1, stride, stride], np.float32))
            out = g.op(
                "Resize",
                [prev, "", scales],
                base,
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
            factor = sec.getfloat("scale", 1.0)
            if factor != 1.0:
                out = g.op("Mul", [out, g.const(f"{base}_factor", np.array(factor, np.float32))], f"{base}_mul")
        elif sec.type == "yolo":
            s = shapes[i]
            boxes, scores, classes = _yolo_head(g, prev, sec, base, s.h, s.w, width, height)
            classes_seen.add(classes)
            heads.append((boxes, scores))
            yolo_layers.add(i)
            out = prev
        else:  # infer_shapes has rejected anything else already
            raise sec.error(f"layer type [{sec.type}] is not supported")
        outputs.append(out)
        prev = out

    if not heads:
        raise ModelFileError(f"{cfg.source}: the cfg has no [yolo] layer")
    if len(classes_seen) != 1:
        raise ModelFileError(f"{cfg.source}: [yolo] layers disagree on classes: {sorted(classes_seen)}")
    num_classes = classes_seen.pop()
    concat = len(heads) > 1
    g.nodes.append(
        helper.make_node("Concat", [h[0] for h in heads], [BOXES_NAME], name=BOXES_NAME, axis=1)
        if concat
        else helper.make_node("Identity", [heads[0][0]], [BOXES_NAME], name=BOXES_NAME)
    )
    g.nodes.append(
        helper.make_node("Concat", [h[1] for h in heads], [SCORES_NAME], name=SCORES_NAME, axis=1)
        if concat
        else helper.make_node("Identity", [heads[0][1]], [SCORES_NAME], name=SCORES_NAME)
    )
    num_boxes = sum(shapes[i].h * shapes[i].w * len(yolo_anchors(cfg.layers[i])[1]) for i in yolo_layers)

    name = model_name or (cfg.path.stem if cfg.path else "darknet")
    graph = helper.make_graph(
        g.nodes,
        name.replace("-", "_"),
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, height, width])],
        [
            helper.make_tensor_value_info(BOXES_NAME, TensorProto.FLOAT, ["N", num_boxes, 4]),
            helper.make_tensor_value_info(SCORES_NAME, TensorProto.FLOAT, ["N", num_boxes, num_classes]),
        ],
        g.inits,
    )
    model = helper.make_model_gen_version(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="lookout",
        producer_version=CONVERTER_VERSION,
    )
    meta = {
        "input_size": str(width),
        "input_height": str(height),
        "num_classes": str(num_classes),
        "num_boxes": str(num_boxes),
        "model_name": name,
        "converter_version": CONVERTER_VERSION,
        "box_format": "xyxy_pixels",
        "bn_eps": repr(float(bn_eps)),
        "letter_box": "1" if cfg.letter_box else "0",
    }
    meta.update(metadata or {})
    helper.set_model_props(model, {_META_PREFIX + k: str(v) for k, v in meta.items()})
    return model


def convert(
    cfg_path: str | Path,
    weights_path: str | Path,
    out_path: str | Path,
    input_size: int | tuple[int, int] = 416,
    opset: int = DEFAULT_OPSET,
    *,
    bn_eps: float = BN_EPS,
) -> Path:
    """Convert darknet cfg + weights into an ONNX file at `out_path` (written atomically); `input_size`
    is a side (square) or (width, height)."""
    started = time.perf_counter()
    size = input_shape(input_size)
    opset = _check_opset(opset)
    cfg_path, weights_path, out_path = Path(cfg_path), Path(weights_path), Path(out_path)
    cfg = parse_cfg(cfg_path)
    weights = read_weights(weights_path, cfg)
    if not (isinstance(bn_eps, (int, float)) and 0 <= bn_eps < 1):
        raise ValueError(f"bn_eps must be a number in [0, 1), got {bn_eps!r}")
    model = build_model(
        cfg,
        weights.layers,
        size,
        opset,
        model_name=cfg_path.stem,
        bn_eps=bn_eps,
        metadata={
            "cfg_sha256": sha256_file(cfg_path),
            "weights_sha256": sha256_file(weights_path),
            "source_cfg": cfg_path.name,
            "source_weights": weights_path.name,
        },
    )
    data = model.SerializeToString()
    onnx.checker.check_model(data)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info(
        "converted %s + %s -> %s (input %dx%d, opset %d) in %.2fs",
        cfg_path,
        weights_path,
        out_path,
        size[0],
        size[1],
        opset,
        time.perf_counter() - started,
    )
    return out_path


def load_graph_info(onnx_path: str | Path) -> dict[str, Any]:
    """Metadata of a converted model: input_size (the width), input_height, num_classes, num_boxes,
    model_name, sha256s, ..."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise missing_file_error(onnx_path, "ONNX model")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a damaged file
        raise ModelFileError(f"ONNX model {onnx_path} cannot be read: {exc}") from None
    info: dict[str, Any] = {
        p.key[len(_META_PREFIX) :]: p.value for p in model.metadata_props if p.key.startswith(_META_PREFIX)
    }
    for key in ("input_size", "input_height", "num_classes", "num_boxes"):
        if key in info:
            try:
                info[key] = int(info[key])
            except ValueError:
                raise ModelFileError(
                    f"ONNX model {onnx_path}: metadata {key}={info[key]!r} is not an integer"
                ) from None
    if "input_size" in info:  # square models from before rectangular inputs do not say
        info.setdefault("input_height", info["input_size"])
    info["letter_box"] = letter_box_from_metadata({p.key: p.value for p in model.metadata_props}, onnx_path)
    info["opset"] = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    info["inputs"] = [i.name for i in model.graph.input]
    info["outputs"] = [o.name for o in model.graph.output]
    return info


def letter_box_from_metadata(props: Mapping[str, str], source: str | Path) -> bool | None:
    """The cfg's letter_box flag an ONNX model's metadata records (`lookout.letter_box`, "0" or "1"),
    or None when the model does not say (made by another tool, or before converter version 2)."""
    raw = props.get(LETTER_BOX_KEY)
    if raw is None:
        return None
    if raw not in ("0", "1"):
        raise ModelFileError(f"ONNX model {source}: metadata {LETTER_BOX_KEY}={raw!r} must be '0' or '1'")
    return raw == "1"


def ensure_onnx(
    cfg: str | Path, weights: str | Path, onnx_path: str | Path, input_size: int | tuple[int, int] = 416
) -> Path:
    """Convert only when `onnx_path` is missing or was built from other files, size or converter."""
    size = input_shape(input_size)
    cfg, weights, onnx_path = Path(cfg), Path(weights), Path(onnx_path)
    for path, what in ((cfg, "darknet cfg"), (weights, "darknet weights")):
        if not path.is_file():
            raise missing_file_error(path, what)
    if onnx_path.is_file():
        want = {
            "input_size": size[0],
            "input_height": size[1],
            "cfg_sha256": sha256_file(cfg),
            "weights_sha256": sha256_file(weights),
            "converter_version": CONVERTER_VERSION,
            "bn_eps": repr(float(BN_EPS)),
        }
        try:
            info = load_graph_info(onnx_path)
        except ModelFileError as exc:
            log.warning("rebuilding %s: %s", onnx_path, exc)
            info = {}
        stale = {k: (info.get(k), v) for k, v in want.items() if info.get(k) != v}
        if not stale:
            log.debug("%s is up to date", onnx_path)
            return onnx_path
        log.info(
            "rebuilding %s: %s", onnx_path, ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in stale.items())
        )
    return convert(cfg, weights, onnx_path, size)


def model_file_name(weights_stem: str, input_size: int | tuple[int, int]) -> str:
    """<weights stem>-<side>.onnx for a square input, <weights stem>-<width>x<height>.onnx otherwise."""
    width, height = input_shape(input_size)
    return f"{weights_stem}-{width}.onnx" if width == height else f"{weights_stem}-{width}x{height}.onnx"


def at_input_size(onnx_path: str | Path, input_size: int | tuple[int, int], folder: str | Path | None = None) -> Path:
    """The model of `onnx_path` at another input size: converted (when missing or stale) from the darknet cfg
    and weights its metadata names, which must lie beside it, into `folder` (default: beside it too) as
    <weights stem>-<width>x<height>.onnx."""
    src = Path(onnx_path)
    info = load_graph_info(src)
    if not info.get("source_cfg") or not info.get("source_weights"):
        raise ModelFileError(
            f"ONNX model {src} does not name its darknet cfg and weights (not made by "
            f"`lookout convert`): convert them yourself with `lookout convert --size --height`"
        )
    out = Path(folder or src.parent) / model_file_name(Path(info["source_weights"]).stem, input_size)
    return ensure_onnx(src.with_name(info["source_cfg"]), src.with_name(info["source_weights"]), out, input_size)
