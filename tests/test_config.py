import pytest
import yaml

from cli import load_app_args
from pipeline.config import ConfigError, parse_args

BASE = {"cameras": [{"id": "demo", "source": "clip.avi"}], "model": {"onnx": "m.onnx"}}


def with_(**over):
    d = {**BASE, **over}
    return d


def test_shipped_serve_config_is_valid():
    args = parse_args(load_app_args("serve_config.yaml"))
    assert args.cameras[0].id == "demo" and args.cameras[0].kind == "file"
    assert args.model.input_size_px == 416


def test_source_kind_is_inferred():
    args = parse_args(with_(cameras=[
        {"id": "a", "source": "rtsp://u:p@10.0.0.1/s"}, {"id": "b", "source": "/dev/video0"},
        {"id": "c", "source": "csi://0"}, {"id": "d", "source": "x.mp4"}]))
    assert [c.kind for c in args.cameras] == ["rtsp", "v4l2", "csi", "file"]


@pytest.mark.parametrize("raw, field, value", [
    (with_(cameras=[{"id": "Bad Id!", "source": "x"}]), "cameras.0.id", "'Bad Id!'"),
    (with_(cameras=[{"id": "a", "source": "x", "fps": -3}]), "cameras.0.fps", "-3"),
    (with_(cameras=[{"id": "a", "source": "x", "colour": "red"}]), "cameras.0.colour", "'red'"),
    (with_(model={"onnx": "m.onnx", "input_size_px": 417}), "model.input_size_px", "417"),
    (with_(model={"onnx": "m.onnx", "conf_threshold": 1.5}), "model.conf_threshold", "1.5"),
    (with_(hls={"encoder": "vp9"}), "hls.encoder", "'vp9'"),
    (with_(detector={"max_batch_size": 0}), "detector.max_batch_size", "0"),
])
def test_errors_name_field_and_value(raw, field, value):
    with pytest.raises(ConfigError) as info:
        parse_args(raw)
    msg = str(info.value)
    assert field in msg and f"(got {value})" in msg


def test_duplicate_camera_ids_and_missing_model():
    with pytest.raises(ConfigError, match="camera id 'a' appears more than once"):
        parse_args(with_(cameras=[{"id": "a", "source": "x"}, {"id": "a", "source": "y"}]))
    with pytest.raises(ConfigError, match="model needs `onnx`, or both `cfg` and `weights`"):
        parse_args(with_(model={"cfg": "x.cfg"}))


def test_check_command_reports_bad_config(tmp_path, capsys):
    from cli import main

    cfg = tmp_path / "serve_config.yaml"
    cfg.write_text(yaml.safe_dump({"applications": [{"import_path": "deployments.app:build_app",
                                                      "args": with_(hls={"segment_s": 99})}]}))
    assert main(["check", str(cfg)]) == 2
    assert "hls.segment_s" in capsys.readouterr().err
