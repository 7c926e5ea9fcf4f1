"""Model file resolution errors and the shape of the Serve application build_app makes."""

import pytest

from pipeline.config import ConfigError, parse_args
from pipeline.models.darknet import ModelFileError
from pipeline.models.resolve import resolve_model


def args_for(tmp_path, **model):
    return parse_args(
        {
            "cameras": [{"id": "a", "source": "x.avi"}, {"id": "b", "source": "y.avi", "enabled": False}],
            "model": model,
            "base_dir": str(tmp_path),
        }
    )


def test_missing_model_files_name_the_setting_path_and_remedy(tmp_path):
    args = args_for(tmp_path, cfg="nope.cfg", weights="nope.weights")
    with pytest.raises(ModelFileError) as info:
        resolve_model(args.model, args)
    msg = str(info.value)
    assert "model.cfg" in msg and str(tmp_path / "nope.cfg") in msg and "lookout fetch-weights" in msg
    args = args_for(tmp_path, onnx="m.onnx")
    with pytest.raises(ModelFileError, match=r"model.onnx: file not found: .*m.onnx"):
        resolve_model(args.model, args)


def test_corrupt_weights_are_a_clear_error(tmp_path, yolo_tiny):
    bad = tmp_path / "yolov4-tiny.weights"
    bad.write_bytes(yolo_tiny.weights.read_bytes()[:1_000_000])
    args = args_for(tmp_path, cfg=str(yolo_tiny.cfg), weights=str(bad))
    with pytest.raises(ModelFileError, match=str(bad)):
        resolve_model(args.model, args)


def test_resolve_converts_once_and_finds_labels(tmp_path, yolo_tiny):
    args = args_for(tmp_path, cfg=str(yolo_tiny.cfg), weights=str(yolo_tiny.weights), onnx="out/m.onnx")
    model = resolve_model(args.model, args)
    assert model.onnx == tmp_path / "out" / "m.onnx" and model.onnx.is_file()
    assert model.labels == yolo_tiny.names
    mtime = model.onnx.stat().st_mtime_ns
    assert resolve_model(args.model, args).onnx.stat().st_mtime_ns == mtime  # not rebuilt


@pytest.mark.parametrize("boxes, stages", [("browser", ["cameras-0"]), ("burned", ["encoder-a", "ingest-a"])])
def test_build_app_wires_each_enabled_camera_by_its_path(tmp_path, boxes, stages):
    from ray.serve._private.build_app import build_app as serve_build

    from deployments.app import build_app

    args = args_for(tmp_path, onnx="m.onnx").model_dump()
    args["hls"]["boxes"] = boxes
    (tmp_path / "x.avi").write_bytes(b"")  # build_app refuses a file camera whose file is missing
    built = serve_build(build_app(args), name="lookout")
    names = sorted(d.name for d in built.deployments)
    assert names == sorted(["detector", "events", "gateway", *stages])
    det = next(d for d in built.deployments if d.name == "detector")
    assert det.user_config == {"max_batch_size": 4, "batch_wait_timeout_s": 0.01}
    events = next(d for d in built.deployments if d.name == "events")
    assert set(events.user_config) == {"rules", "zones", "tracking"} and events.num_replicas == 1
    with pytest.raises(ConfigError, match="cameras.0.id"):
        build_app({"cameras": [{"id": "Bad!", "source": "x"}], "model": {"onnx": "m.onnx"}})
