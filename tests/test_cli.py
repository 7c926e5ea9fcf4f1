"""The `lookout` command's error paths: clear messages and exit codes, never a traceback."""

from cli import main


def test_build_engine_without_tensorrt_is_a_clear_error(capsys, yolo_tiny_onnx):
    assert main(["build-engine", str(yolo_tiny_onnx)]) == 3
    err = capsys.readouterr().err
    assert "tensorrt/pycuda not installed" in err and "lookout[tensorrt]" in err and "Traceback" not in err


def test_build_engine_int8_needs_calibration_images(capsys, yolo_tiny_onnx):
    assert main(["build-engine", str(yolo_tiny_onnx), "--precision", "int8"]) == 2
    assert "--calib-images DIR" in capsys.readouterr().err


def test_convert_missing_weights_names_the_path(capsys, tmp_path, yolo_tiny):
    missing = tmp_path / "nope.weights"
    assert main(["convert", str(yolo_tiny.cfg), str(missing), "-o", str(tmp_path / "m.onnx")]) == 2
    assert str(missing) in capsys.readouterr().err
