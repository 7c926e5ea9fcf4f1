"""INT8 for the CPU backends: our ONNX model quantized (static, QDQ) on real images, checked, cached.

ONNX Runtime and OpenVINO both run the QDQ model with INT8 kernels (VNNI where the CPU has it, AVX2
else): on a 2-vCPU AMD EPYC without AVX-512, yolov4-tiny 416 went from ~90 to ~56 ms per frame on one
thread (docs/benchmarks.md). What stays in FP32, and why: the first convolution (it sees raw pixels,
whose range the others do not share) and each YOLO head with the convolution that feeds it (boxes in
pixels and sigmoid scores lose whole objects at 8 bits). Quantizing those too cost 6-12 mAP@0.5 points
on coco-mini; kept in FP32 the model finds 99 % of the FP32 model's detections on real video.

The quantized model is checked before it is used: on the calibration images it must find at least
`MIN_AGREEMENT` of the FP32 model's detections (same class, IoU >= 0.5). The model and the check's result
are cached under `model.engine_cache_dir`, keyed by the source model and the images, so a detector
replica quantizes once per node (under a file lock) and later starts load the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.models.calibration import CalibrationBatches
from pipeline.models.engine_cache import atomic_write_bytes, exclusive_lock
from pipeline.models.onnx_export import letter_box_from_metadata, sha256_file
from pipeline.models.yolo import postprocess, preprocess_batch, resolve_letter_box
from pipeline.tracking import pair_same_class

log = logging.getLogger(__name__)

RECIPE = "qdq-s8w-u8a-perchannel-minmax-fp32ends-v1"  # part of the cache key: change it with the recipe
MIN_AGREEMENT = 0.95  # share of the FP32 model's detections the INT8 model must also find
MIN_IMAGES = 8
MATCH_IOU = 0.5


class QuantizationError(RuntimeError):
    """The model could not be quantized, or the quantized model disagrees with the FP32 one."""


@dataclass
class QuantizedModel:
    """A quantized model file and its check against the FP32 model on the calibration images."""

    path: Path
    source_sha256: str
    images: int
    reference_detections: int
    matched: int
    agreement: float
    seconds: float


def fp32_nodes(model) -> list[str]:
    """Node names kept in FP32: the first Conv on the input, and each YOLO head (nodes of our converter
    named `*_yolo*`) with the Conv that feeds it."""
    producers = {out: node for node in model.graph.node for out in node.output}
    inputs = {i.name for i in model.graph.input}
    keep = [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] in inputs]
    for node in model.graph.node:
        if "_yolo" not in node.name:
            continue
        keep.append(node.name)
        feeder = producers.get(node.input[0])
        if feeder is not None and feeder.op_type == "Conv":
            keep.append(feeder.name)
    return sorted(set(keep))


def cache_paths(cache_dir: str | Path, onnx_path: str | Path, source_sha256: str, images_fp: str) -> tuple[Path, Path]:
    """The quantized model's file and its sidecar (the check's result) in `cache_dir`."""
    key = hashlib.sha256(f"{source_sha256}/{images_fp}/{RECIPE}".encode()).hexdigest()[:16]
    base = Path(cache_dir) / f"{Path(onnx_path).stem}-int8-{key}"
    return base.with_suffix(".onnx"), base.with_suffix(".json")


def ensure_int8(
    onnx_path: str | Path,
    calib_images: str | Path | None,
    cache_dir: str | Path,
    *,
    letter_box: bool | str = "auto",
    conf_threshold: float = 0.3,
    iou_threshold: float = 0.45,
    strip_of_px: tuple[int, int] | None = None,
) -> QuantizedModel:
    """The INT8 model of `onnx_path`, quantized on `calib_images` (a folder of real .jpg/.png frames) and
    checked, from the cache when it is there. `strip_of_px`: the model is a strip model of one with that
    input (pipeline.regions); it is calibrated and checked on strips of the images. Raises QuantizationError when it fails the check (that
    result is cached too: a failing set of images is not quantized again at every start)."""
    if calib_images is None:
        raise ValueError(
            "model.precision 'int8' needs model.calib_images: a folder of real .jpg/.png "
            "frames of your cameras (at least 8; 50-100 taken over a day are better)"
        )
    onnx_path = Path(onnx_path)
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    fit_letter_box = resolve_letter_box(letter_box, letter_box_from_metadata(meta, onnx_path))
    size = _input_size(model, onnx_path)
    batches = CalibrationBatches(calib_images, size, batch_size=1, letter_box=fit_letter_box, strip_of_px=strip_of_px)
    if batches.num_images < MIN_IMAGES:
        raise ValueError(
            f"model.calib_images {str(calib_images)!r} has {batches.num_images} image(s); "
            f"INT8 calibration needs at least {MIN_IMAGES}"
        )
    source_sha = sha256_file(onnx_path)
    model_path, sidecar = cache_paths(cache_dir, onnx_path, source_sha, batches.fingerprint())
    with exclusive_lock(model_path.with_suffix(".lock")):
        done = _read_sidecar(sidecar)
        if done is None or (done.get("error") is None and not model_path.is_file()):
            done = _quantize_and_check(
                onnx_path, model_path, sidecar, batches, source_sha, conf_threshold, iou_threshold
            )
    if done.get("error"):
        raise QuantizationError(done["error"])
    return QuantizedModel(**{**done["result"], "path": model_path})


def _input_size(model, onnx_path: Path) -> tuple[int, int]:
    """(width, height) of the model's fixed input."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    h, w = dims[2].dim_value, dims[3].dim_value
    if not h or not w:
        raise QuantizationError(f"ONNX model {onnx_path}: INT8 needs a fixed input height and width, got {h}x{w}")
    return int(w), int(h)


def _read_sidecar(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("recipe") == RECIPE else None


def _quantize_and_check(
    onnx_path: Path,
    model_path: Path,
    sidecar: Path,
    batches: CalibrationBatches,
    source_sha: str,
    conf_threshold: float,
    iou_threshold: float,
) -> dict:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    import onnx

    t0 = time.perf_counter()
    log.info(
        "quantizing %s to INT8 on %d calibration images (once per node; about a minute)", onnx_path, batches.num_images
    )
    source = onnx.load(str(onnx_path))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self._it, None)
            return None if batch is None else {source.graph.input[0].name: batch}

    tmp = model_path.with_name(f".{model_path.name}.tmp")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        quantize_static(
            str(onnx_path),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=fp32_nodes(source),
            calibrate_method=CalibrationMethod.MinMax,
        )
        quantized = onnx.load(str(tmp))
        del quantized.metadata_props[:]  # the source's (input size, letter_box, classes) travel with it
        quantized.metadata_props.extend(source.metadata_props)
        atomic_write_bytes(model_path, quantized.SerializeToString())
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many kinds; the caller gets one
        raise QuantizationError(f"ONNX model {onnx_path} could not be quantized to INT8: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    matched, total = agreement(onnx_path, model_path, batches, conf_threshold, iou_threshold)
    share = matched / total if total else 1.0
    result = asdict(
        QuantizedModel(
            path=model_path,
            source_sha256=source_sha,
            images=batches.num_images,
            reference_detections=total,
            matched=matched,
            agreement=round(share, 4),
            seconds=round(time.perf_counter() - t0, 1),
        )
    )
    result.pop("path")
    error = None
    if total == 0:
        error = (
            f"INT8 check: the FP32 model finds nothing in the {batches.num_images} images of "
            f"model.calib_images {str(batches.images_dir)!r}; use frames where objects are seen"
        )
    elif share < MIN_AGREEMENT:
        error = (
            f"INT8 model finds only {matched} of the FP32 model's {total} detections ({share:.1%} < "
            f"{MIN_AGREEMENT:.0%}) on model.calib_images {str(batches.images_dir)!r}; use precision fp32"
        )
    if error:
        model_path.unlink(missing_ok=True)
    atomic_write_bytes(sidecar, json.dumps({"recipe": RECIPE, "result": result, "error": error}).encode())
    log.info(
        "INT8 model %s: %d of %d FP32 detections found (%.1f %%) in %.0f s%s",
        model_path.name,
        matched,
        total,
        100 * share,
        result["seconds"],
        f"; rejected: {error}" if error else "",
    )
    return {"recipe": RECIPE, "result": result, "error": error}


def agreement(
    reference: str | Path,
    candidate: str | Path,
    batches: CalibrationBatches,
    conf_threshold: float = 0.3,
    iou_threshold: float = 0.45,
) -> tuple[int, int]:
    """(matched, total): of the reference model's detections on `batches`' images, how many the
    candidate also finds (same class, IoU >= 0.5, each candidate box used once)."""
    from pipeline.models.backends.onnxruntime import OnnxRuntimeBackend

    ref, cand = OnnxRuntimeBackend(reference), OnnxRuntimeBackend(candidate)
    matched = total = 0
    for path in batches.paths:
        for image in batches.inputs(path):
            batch, fits = preprocess_batch([image], batches.input_shape_px, letter_box=batches.letter_box)
            (ref_boxes, ref_scores), (cand_boxes, cand_scores) = ref.infer(batch), cand.infer(batch)
            a = postprocess(ref_boxes[0], ref_scores[0], fits[0], conf_threshold, iou_threshold)
            b = postprocess(cand_boxes[0], cand_scores[0], fits[0], conf_threshold, iou_threshold)
            total += len(a)
            matched += len(pair_same_class(b, a, MATCH_IOU))
    return matched, total
