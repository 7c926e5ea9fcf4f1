"""Darknet model files: the .cfg parser, layer shape inference and the .weights reader/writer.

A darknet network is described by a .cfg file (INI-like sections, in order) and a .weights
file (a small header, then float32 parameters of every parametrised layer, in layer order).
Everything that is wrong with either file raises :class:`ModelFileError`, whose message names
the file and what is wrong with it.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

FETCH_HINT = "run `lookout fetch-weights` to download the official YOLOv4-tiny files"
OptionValue = Union[int, float, str, tuple]

_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class ModelFileError(ValueError):
    """A model file (darknet cfg/weights, ONNX) is missing, malformed, truncated or corrupt."""


def missing_file_error(path: Path, what: str) -> ModelFileError:
    return ModelFileError(f"{what} {path} does not exist ({FETCH_HINT}, or pass the path of your own file)")


def _parse_value(raw: str) -> OptionValue:
    raw = raw.strip()
    if "," in raw:
        items = [p.strip() for p in raw.split(",") if p.strip()]
        parsed = [_parse_value(p) for p in items]
        if all(isinstance(p, (int, float)) for p in parsed):
            return tuple(parsed)
        return raw
    if _INT_RE.match(raw):
        return int(raw)
    if _FLOAT_RE.match(raw):
        return float(raw)
    return raw


@dataclass(frozen=True)
class Section:
    """One `[type]` section of a cfg file with its options, parsed into int, float, str or tuple."""

    type: str
    options: Mapping[str, OptionValue]
    line: int = 0
    source: str = "<cfg>"

    def where(self) -> str:
        return f"{self.source}:{self.line} [{self.type}]"

    def error(self, msg: str) -> ModelFileError:
        return ModelFileError(f"{self.where()}: {msg}")

    def has(self, name: str) -> bool:
        return name in self.options

    def getint(self, name: str, default: int | None = None) -> int:
        value = self.options.get(name, default)
        if value is None:
            raise self.error(f"missing required option '{name}'")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise self.error(f"option '{name}' must be an integer, got {value!r}")
        return value

    def getfloat(self, name: str, default: float | None = None) -> float:
        value = self.options.get(name, default)
        if value is None:
            raise self.error(f"missing required option '{name}'")
        if not isinstance(value, (int, float)):
            raise self.error(f"option '{name}' must be a number, got {value!r}")
        return float(value)

    def getstr(self, name: str, default: str | None = None) -> str:
        value = self.options.get(name, default)
        if value is None:
            raise self.error(f"missing required option '{name}'")
        return str(value).strip()

    def getints(self, name: str, default: Sequence[int] | None = None) -> list[int]:
        value = self.options.get(name, None if default is None else tuple(default))
        if value is None:
            raise self.error(f"missing required option '{name}'")
        values = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(v, int) for v in values):
            raise self.error(f"option '{name}' must be a list of integers, got {value!r}")
        return list(values)

    def getfloats(self, name: str, default: Sequence[float] | None = None) -> list[float]:
        value = self.options.get(name, None if default is None else tuple(default))
        if value is None:
            raise self.error(f"missing required option '{name}'")
        values = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(v, (int, float)) for v in values):
            raise self.error(f"option '{name}' must be a list of numbers, got {value!r}")
        return [float(v) for v in values]


@dataclass(frozen=True)
class DarknetConfig:
    """A parsed cfg: the `[net]` section and the layer sections in file order."""

    net: Section
    layers: tuple[Section, ...]
    path: Path | None = None

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "<cfg>"

    @property
    def width(self) -> int:
        return self.net.getint("width", 416)

    @property
    def height(self) -> int:
        return self.net.getint("height", 416)

    @property
    def channels(self) -> int:
        return self.net.getint("channels", 3)

    @property
    def letter_box(self) -> bool:
        """[net] letter_box: darknet keeps the aspect ratio (pads) when 1, stretches to width x height
        when 0, its default (parse_net_options; the same flag at training and inference)."""
        value = self.net.getint("letter_box", 0)
        if value not in (0, 1):
            raise self.net.error(f"option 'letter_box' must be 0 or 1, got {value!r}")
        return bool(value)


def parse_cfg_text(text: str, source: str = "<cfg>") -> DarknetConfig:
    """Parse cfg text; `source` names it in error messages."""
    sections: list[tuple[str, int, dict[str, OptionValue]]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise ModelFileError(f"{source}:{lineno}: malformed section header {line!r}")
            sections.append((line[1:-1].strip().lower(), lineno, {}))
            continue
        if "=" not in line:
            raise ModelFileError(f"{source}:{lineno}: expected 'key=value' or '[section]', got {line!r}")
        if not sections:
            raise ModelFileError(f"{source}:{lineno}: option {line!r} appears before any [section]")
        key, value = line.split("=", 1)
        key = key.strip()
        if not key or not value.strip():
            raise ModelFileError(f"{source}:{lineno}: empty key or value in {line!r}")
        sections[-1][2][key] = _parse_value(value)
    if not sections:
        raise ModelFileError(f"{source}: no sections found (is this a darknet .cfg file?)")
    first_type, first_line, _ = sections[0]
    if first_type not in ("net", "network"):
        raise ModelFileError(f"{source}:{first_line}: the first section must be [net], got [{first_type}]")
    built = [Section(t, opts, ln, source) for t, ln, opts in sections]
    for extra in built[1:]:
        if extra.type in ("net", "network"):
            raise ModelFileError(f"{source}:{extra.line}: a second [net] section")
    if len(built) == 1:
        raise ModelFileError(f"{source}: the cfg has a [net] section but no layers")
    return DarknetConfig(built[0], tuple(built[1:]))


def parse_cfg(path: str | Path) -> DarknetConfig:
    """Read and parse a darknet .cfg file."""
    path = Path(path)
    if not path.is_file():
        raise missing_file_error(path, "darknet cfg")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"darknet cfg {path} is not a text file ({exc})") from None
    cfg = parse_cfg_text(text, str(path))
    return DarknetConfig(cfg.net, cfg.layers, path)


# --------------------------------------------------------------------------------------
# Layer shapes


@dataclass(frozen=True)
class LayerShape:
    """Output of a layer in a batch-1 forward pass: channels, height, width."""

    c: int
    h: int
    w: int


def conv_geometry(sec: Section) -> tuple[int, int, int, int, int]:
    """filters, size, stride, padding, groups of a [convolutional] section (darknet's defaults)."""
    filters = sec.getint("filters", 1)
    size = sec.getint("size", 1)
    stride = sec.getint("stride", 1)
    pad = sec.getint("pad", 0)
    padding = size // 2 if pad else sec.getint("padding", 0)
    groups = sec.getint("groups", 1)
    for name in ("stride_x", "stride_y", "dilation"):
        if sec.has(name) and sec.getint(name) != (stride if name != "dilation" else 1):
            raise sec.error(f"option '{name}' is not supported")
    if filters < 1 or size < 1 or stride < 1 or groups < 1 or padding < 0:
        raise sec.error(
            f"invalid geometry filters={filters} size={size} stride={stride} padding={padding} groups={groups}"
        )
    return filters, size, stride, padding, groups


def maxpool_geometry(sec: Section) -> tuple[int, int, int]:
    """size, stride, padding (total, split as padding//2 before, rest after) of a [maxpool]."""
    stride = sec.getint("stride", 1)
    size = sec.getint("size", stride)
    padding = sec.getint("padding", size - 1)
    for name in ("stride_x", "stride_y"):
        if sec.has(name) and sec.getint(name) != stride:
            raise sec.error(f"option '{name}' is not supported")
    if sec.getint("maxpool_depth", 0):
        raise sec.error("maxpool_depth is not supported")
    if size < 1 or stride < 1 or padding < 0:
        raise sec.error(f"invalid geometry size={size} stride={stride} padding={padding}")
    return size, stride, padding


def route_inputs(cfg: DarknetConfig, index: int) -> list[int]:
    """Absolute layer indexes a [route] layer at `index` reads."""
    sec = cfg.layers[index]
    out = []
    for ref in sec.getints("layers"):
        absolute = index + ref if ref < 0 else ref
        if not 0 <= absolute < index:
            raise sec.error(f"layers={ref} refers to layer {absolute}, outside 0..{index - 1}")
        out.append(absolute)
    if not out:
        raise sec.error("empty 'layers'")
    return out


def shortcut_input(cfg: DarknetConfig, index: int) -> int:
    sec = cfg.layers[index]
    refs = sec.getints("from")
    if len(refs) != 1:
        raise sec.error(f"only a single 'from' is supported, got {refs}")
    absolute = index + refs[0] if refs[0] < 0 else refs[0]
    if not 0 <= absolute < index:
        raise sec.error(f"from={refs[0]} refers to layer {absolute}, outside 0..{index - 1}")
    return absolute


def yolo_anchors(sec: Section) -> tuple[list[tuple[float, float]], list[int]]:
    """(all anchors as (w, h) pairs, this layer's mask) of a [yolo] section."""
    flat = sec.getfloats("anchors")
    if len(flat) % 2:
        raise sec.error(f"'anchors' must hold (w, h) pairs, got {len(flat)} numbers")
    anchors = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    num = sec.getint("num", len(anchors))
    mask = sec.getints("mask") if sec.has("mask") else list(range(num))
    for m in mask:
        if not 0 <= m < len(anchors):
            raise sec.error(f"mask index {m} outside the {len(anchors)} anchors")
    return anchors, mask


def infer_shapes(
    cfg: DarknetConfig, width: int | None = None, height: int | None = None, channels: int | None = None
) -> list[LayerShape]:
    """Output shape of every layer for an input of width x height (default: the cfg's)."""
    w = cfg.width if width is None else width
    h = cfg.height if height is None else height
    c = cfg.channels if channels is None else channels
    shapes: list[LayerShape] = []
    prev = LayerShape(c, h, w)
    for i, sec in enumerate(cfg.layers):
        if sec.type in ("convolutional", "conv"):
            filters, size, stride, padding, groups = conv_geometry(sec)
            if prev.c % groups or filters % groups:
                raise sec.error(f"groups={groups} does not divide input channels {prev.c} and filters {filters}")
            oh = (prev.h + 2 * padding - size) // stride + 1
            ow = (prev.w + 2 * padding - size) // stride + 1
            out = LayerShape(filters, oh, ow)
        elif sec.type in ("maxpool", "max"):
            size, stride, padding = maxpool_geometry(sec)
            out = LayerShape(prev.c, (prev.h + padding - size) // stride + 1, (prev.w + padding - size) // stride + 1)
        elif sec.type == "route":
            refs = route_inputs(cfg, i)
            groups = sec.getint("groups", 1)
            group_id = sec.getint("group_id", 0)
            if groups < 1 or not 0 <= group_id < groups:
                raise sec.error(f"invalid groups={groups} group_id={group_id}")
            first = shapes[refs[0]]
            total = 0
            for r in refs:
                s = shapes[r]
                if (s.h, s.w) != (first.h, first.w):
                    raise sec.error(
                        f"routed layers have different sizes: layer {refs[0]} is "
                        f"{first.h}x{first.w}, layer {r} is {s.h}x{s.w}"
                    )
                if s.c % groups:
                    raise sec.error(f"groups={groups} does not divide the {s.c} channels of layer {r}")
                total += s.c // groups
            out = LayerShape(total, first.h, first.w)
        elif sec.type == "shortcut":
            src = shapes[shortcut_input(cfg, i)]
            if src != prev:
                raise sec.error(f"shortcut of different shapes ({src} vs {prev}) is not supported")
            out = prev
        elif sec.type == "upsample":
            stride = sec.getint("stride", 2)
            if stride < 1:
                raise sec.error(f"stride={stride} (downsampling) is not supported")
            out = LayerShape(prev.c, prev.h * stride, prev.w * stride)
        elif sec.type in ("yolo", "region"):
            if sec.type == "region":
                raise sec.error("[region] (YOLOv2) layers are not supported")
            anchors, mask = yolo_anchors(sec)
            classes = sec.getint("classes", 20)
            if prev.c != len(mask) * (5 + classes):
                raise sec.error(
                    f"expects {len(mask)} anchors x (5 + {classes} classes) = "
                    f"{len(mask) * (5 + classes)} input channels, the previous layer "
                    f"gives {prev.c}"
                )
            out = prev
        else:
            raise sec.error(f"layer type [{sec.type}] is not supported")
        if out.c < 1 or out.h < 1 or out.w < 1:
            raise sec.error(f"input {w}x{h} is too small: this layer's output would be {out}")
        shapes.append(out)
        prev = out
    return shapes


# --------------------------------------------------------------------------------------
# Weights


@dataclass
class ConvParams:
    """Parameters of one convolutional layer as stored in a .weights file."""

    biases: np.ndarray
    weights: np.ndarray
    scales: np.ndarray | None = None
    rolling_mean: np.ndarray | None = None
    rolling_var: np.ndarray | None = None

    @property
    def batch_normalize(self) -> bool:
        return self.scales is not None


@dataclass
class DarknetWeights:
    """A parsed .weights file: header fields and the parameters of each conv layer by index."""

    path: Path | None
    major: int
    minor: int
    revision: int
    seen: int
    layers: dict[int, ConvParams] = field(default_factory=dict)


def _seen_is_int64(major: int, minor: int) -> bool:
    return major * 10 + minor >= 2


def header_size(major: int, minor: int) -> int:
    return 12 + (8 if _seen_is_int64(major, minor) else 4)


def param_layout(cfg: DarknetConfig) -> list[tuple[int, bool, tuple[int, int, int, int]]]:
    """(layer index, batch_normalize, weight shape) of every layer with parameters, in file order."""
    shapes = infer_shapes(cfg)
    layout = []
    for i, sec in enumerate(cfg.layers):
        if sec.type not in ("convolutional", "conv"):
            continue
        filters, size, _, _, groups = conv_geometry(sec)
        in_c = shapes[i - 1].c if i else cfg.channels
        layout.append((i, bool(sec.getint("batch_normalize", 0)), (filters, in_c // groups, size, size)))
    return layout


def param_count(cfg: DarknetConfig) -> int:
    """Number of float32 parameters the .weights file of this cfg holds after its header."""
    total = 0
    for _, bn, shape in param_layout(cfg):
        total += shape[0] * (4 if bn else 1) + math.prod(shape)
    return total


def read_weights(path: str | Path, cfg: DarknetConfig) -> DarknetWeights:
    """Read a darknet .weights file for `cfg`; the file must hold exactly the cfg's parameters."""
    path = Path(path)
    if not path.is_file():
        raise missing_file_error(path, "darknet weights")
    raw = path.read_bytes()
    if len(raw) < 16:
        raise ModelFileError(f"darknet weights {path} is truncated: {len(raw)} bytes, shorter than the 16-byte header")
    major, minor, revision = (int(v) for v in np.frombuffer(raw, "<i4", 3))
    if not (0 <= major < 1000 and 0 <= minor < 1000 and 0 <= revision < 1_000_000):
        raise ModelFileError(
            f"darknet weights {path} has a corrupt header: version "
            f"{major}.{minor}.{revision} (is this a darknet .weights file?)"
        )
    hsize = header_size(major, minor)
    seen = int(np.frombuffer(raw, "<i8" if hsize == 20 else "<i4", 1, 12)[0])
    needed = param_count(cfg)
    body = len(raw) - hsize
    if body % 4:
        raise ModelFileError(
            f"darknet weights {path} is corrupt: {body} bytes after the header is not a whole number of float32 values"
        )
    have = body // 4
    if have != needed:
        what = "truncated" if have < needed else "too large"
        raise ModelFileError(
            f"darknet weights {path} is {what} for {cfg.source}: it holds {have} float32 parameters "
            f"({len(raw)} bytes) but the cfg needs {needed} ({hsize + 4 * needed} bytes); "
            f"cfg and weights do not belong together or the file is damaged"
        )
    values = np.frombuffer(raw, "<f4", have, hsize)
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ModelFileError(
            f"darknet weights {path} is corrupt: parameter {bad} (byte {hsize + 4 * bad}) is {values[bad]}"
        )
    out = DarknetWeights(path, major, minor, revision, seen)
    offset = 0

    def take(n: int) -> np.ndarray:
        nonlocal offset
        arr = values[offset : offset + n]
        offset += n
        return arr

    for index, bn, shape in param_layout(cfg):
        filters = shape[0]
        biases = take(filters)
        scales = mean = var = None
        if bn:
            scales, mean, var = take(filters), take(filters), take(filters)
            if (var < 0).any():
                raise ModelFileError(
                    f"darknet weights {path} is corrupt: layer {index} has a negative batch-norm variance"
                )
        weights = take(math.prod(shape)).reshape(shape)
        out.layers[index] = ConvParams(biases, weights, scales, mean, var)
    log.debug("read %s: version %d.%d.%d, seen %d, %d conv layers", path, major, minor, revision, seen, len(out.layers))
    return out


def write_weights(
    path: str | Path,
    cfg: DarknetConfig,
    layers: Mapping[int, ConvParams],
    version: tuple[int, int, int] = (0, 2, 5),
    seen: int = 0,
) -> Path:
    """Write a .weights file for `cfg` (e.g. generated parameters for tests)."""
    path = Path(path)
    major, minor, revision = version
    chunks: list[np.ndarray] = []
    for index, bn, shape in param_layout(cfg):
        if index not in layers:
            raise ValueError(f"layers has no parameters for conv layer {index}")
        p = layers[index]
        parts: Iterable[np.ndarray | None] = (
            (p.biases, p.scales, p.rolling_mean, p.rolling_var, p.weights) if bn else (p.biases, p.weights)
        )
        for part in parts:
            if part is None:
                raise ValueError(f"layers[{index}] lacks batch-norm parameters the cfg asks for")
            chunks.append(np.asarray(part, "<f4").ravel())
        if chunks[-1].size != math.prod(shape):
            raise ValueError(f"layers[{index}].weights has {chunks[-1].size} values, expected shape {shape}")
    header = np.array([major, minor, revision], "<i4").tobytes()
    header += np.array([seen], "<i8" if _seen_is_int64(major, minor) else "<i4").tobytes()
    with open(path, "wb") as f:
        f.write(header)
        for chunk in chunks:
            f.write(chunk.tobytes())
    return path
