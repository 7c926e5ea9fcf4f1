"""The detection model: files, input size, backend, precision, thresholds."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field, model_validator

from .base import _Model

log = logging.getLogger(__name__)


class OpenVinoOptions(_Model):
    """OpenVINO's own settings (`model.openvino`). Settings that apply to whichever backend runs (precision,
    intra_op_threads) stay in `model`; a backend's own go in its section."""

    streams: int = Field(
        1,
        ge=1,
        le=64,
        description="Parts a batch is split into and run in parallel, each on its share of the threads "
        "(1: one request on all threads, the lowest latency).",
    )


# Old spellings still read, each with where its value now goes.
MOVED_FIELDS = {"openvino_streams": ("openvino", "streams")}


class ModelConfig(_Model):
    """The detection model and its thresholds."""

    name: str = Field("yolov4-tiny", description="Model name reported with each result.")
    cfg: str | None = Field(None, description="Darknet .cfg path (used to build the ONNX file).")
    weights: str | None = Field(None, description="Darknet .weights path (used to build the ONNX file).")
    onnx: str | None = Field(
        None, description="ONNX path; built from cfg+weights when missing. Default: next to the weights."
    )
    labels: str | None = Field(None, description="Class names file, one per line; default: COCO's 80.")
    input_size_px: int = Field(
        416, ge=32, le=1536, multiple_of=32, description="Network input width (and height unless input_height_px says)."
    )
    input_height_px: int | None = Field(
        None,
        ge=32,
        le=1536,
        multiple_of=32,
        description="Network input height when it differs from the width: the cameras' aspect costs less inference "
        "than a square (416x320 for 4:3, 416x256 for 16:9: 23 %, 38 % fewer pixels). Not with TensorRT.",
    )
    backend: Literal["auto", "onnxruntime", "openvino", "tensorrt", "torch"] = Field(
        "auto",
        description="Inference backend; 'auto': TensorRT, then torch where a GPU is, then OpenVINO on x86 "
        "CPUs, then ONNX Runtime (the first one installed that can run).",
    )
    conf_threshold: float = Field(0.3, ge=0.0, le=1.0, description="Minimum confidence kept.")
    nms_iou_threshold: float = Field(0.45, gt=0.0, le=1.0, description="IoU above which boxes of a class merge.")
    max_detections: int = Field(300, ge=1, le=10000, description="Most detections kept per frame.")
    classes: list[str] | None = Field(None, description="Only keep these labels (default: all).")
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="CPU inference threads of ONNX Runtime or OpenVINO, whichever runs "
        "(0: the runtime's default, every core).",
    )
    openvino: OpenVinoOptions = Field(default_factory=OpenVinoOptions, description="OpenVINO's own settings.")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16",
        description="Numeric precision. GPU backends: fp16 (default), fp32 or int8. ONNX Runtime and OpenVINO "
        "on CPU run fp32 unless this is int8 (quantized once per node on calib_images, "
        "checked against fp32).",
    )
    engine_cache_dir: str = Field(
        "data/engines", description="Where TensorRT engines and INT8 models are cached, per node."
    )
    calib_images: str | None = Field(None, description="Folder of real images for INT8 calibration.")
    letter_box: bool | Literal["auto"] = Field(
        "auto",
        description="How frames fill the network input, as the model was trained: true keeps the aspect "
        "ratio on grey padding, false stretches; 'auto': the darknet cfg's [net] letter_box, "
        "recorded in the ONNX file (false, darknet's default, when the file does not say).",
    )

    region_widths_px: list[int] = Field(
        default_factory=list,
        max_length=4,
        description="CPU backends: while a camera's motion gate sends frames because something moves, detect "
        "only a full-height strip of the frame around the motion and the objects last seen, with the narrowest "
        "of these model widths that holds them (multiples of 32, below input_size_px; each is converted from "
        "cfg + weights). Empty: always the whole frame.",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: Any) -> Any:
        """A field that moved into a backend's section is read from its old place, with a warning."""
        if not isinstance(data, dict) or not MOVED_FIELDS.keys() & data.keys():
            return data
        data = dict(data)
        for old, (section, name) in MOVED_FIELDS.items():
            if old not in data:
                continue
            value, given = data.pop(old), data.get(section) or {}
            if isinstance(given, _Model):
                given = given.model_dump(exclude_unset=True)
            if not isinstance(given, dict):
                continue  # the section's own validation names what is wrong with it
            if name in given:
                raise ValueError(f"model.{old} and model.{section}.{name} both given: keep model.{section}.{name}")
            log.warning("model.%s is the old name of model.%s.%s: write that instead", old, section, name)
            data[section] = {**given, name: value}
        return data

    @model_validator(mode="after")
    def _check_sources(self) -> "ModelConfig":
        if self.onnx is None and (self.cfg is None or self.weights is None):
            raise ValueError("model needs `onnx`, or both `cfg` and `weights`")
        if self.backend == "tensorrt" and self.input_shape_px[0] != self.input_shape_px[1]:
            raise ValueError(
                f"model.input_height_px={self.input_height_px}: the tensorrt backend takes square "
                f"inputs only (model.input_size_px={self.input_size_px})"
            )
        bad = [w for w in self.region_widths_px if w % 32 or not 32 <= w < self.input_size_px]
        if bad:
            raise ValueError(
                f"model.region_widths_px={self.region_widths_px}: each must be a multiple of 32 from 32 to "
                f"below model.input_size_px={self.input_size_px}"
            )
        if self.region_widths_px and (self.cfg is None or self.weights is None):
            raise ValueError(
                f"model.region_widths_px={self.region_widths_px} needs model.cfg and model.weights "
                "(each strip model is converted from them)"
            )
        if self.region_widths_px and self.backend in ("tensorrt", "torch"):
            raise ValueError(
                f"model.region_widths_px={self.region_widths_px}: strips are for the CPU backends "
                f"(onnxruntime, openvino, auto), not model.backend={self.backend!r}"
            )
        return self

    @property
    def input_shape_px(self) -> tuple[int, int]:
        """(width, height) of the network input."""
        return self.input_size_px, self.input_height_px or self.input_size_px
