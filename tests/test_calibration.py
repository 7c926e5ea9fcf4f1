"""INT8 calibration batches from real images, preprocessed exactly like inference."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.models.backends.base import BackendUnavailable
from pipeline.models.calibration import CalibrationBatches, list_images, make_entropy_calibrator
from pipeline.models.yolo import preprocess_batch

SIZE = 416


@pytest.fixture(scope="module")
def coco_images(assets_dir) -> Path:
    folder = assets_dir / "coco-mini" / "images"
    assert len(list(folder.glob("*.jpg"))) == 6, f"expected the 6 coco-mini images in {folder}"
    return folder


def reference(paths: list[Path], size: int = SIZE) -> np.ndarray:
    return preprocess_batch([cv2.imread(str(p)) for p in paths], size, letter_box=False)[0]


def test_lists_real_images_sorted(coco_images):
    paths = list_images(coco_images)
    assert [p.name for p in paths] == sorted(p.name for p in coco_images.glob("*.jpg"))
    assert len(paths) == 6
    assert list_images(coco_images, max_images=2) == paths[:2]


def test_batches_match_inference_preprocessing(coco_images):
    batches = CalibrationBatches(coco_images, SIZE, batch_size=3, letter_box=False)
    out = list(batches)
    assert len(out) == len(batches) == 2
    paths = list_images(coco_images)
    for i, batch in enumerate(out):
        assert batch.shape == (3, 3, SIZE, SIZE) == batches.batch_shape
        assert batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"]
        assert batch.min() >= 0.0 and batch.max() <= 1.0
        assert batch.std() > 0.05  # real pictures, not padding
        np.testing.assert_array_equal(batch, reference(paths[3 * i : 3 * i + 3]))
    assert batches.nbytes == out[0].nbytes


def test_batches_fit_images_as_the_model_says(coco_images):
    """Calibration sees the pixels inference will: stretched (darknet's default) or letterboxed."""
    paths = list_images(coco_images)[:2]
    images = [cv2.imread(str(p)) for p in paths]
    for letter_box in (False, True):
        (batch,) = list(CalibrationBatches(coco_images, SIZE, batch_size=2, max_images=2, letter_box=letter_box))
        np.testing.assert_array_equal(batch, preprocess_batch(images, SIZE, letter_box=letter_box)[0])
        grey = np.float32(127) * np.float32(1 / 255)
        grey_rows = (batch[0] == grey).all(axis=(0, 2))  # 640x480: letterboxed, grey above and below
        assert bool(grey_rows.any()) is letter_box


def test_last_partial_batch_is_padded_with_the_first_images(coco_images):
    paths = list_images(coco_images)
    batches = CalibrationBatches(coco_images, SIZE, batch_size=4, letter_box=False)
    out = list(batches)
    assert len(out) == 2
    np.testing.assert_array_equal(out[0], reference(paths[:4]))
    np.testing.assert_array_equal(out[1], reference([paths[4], paths[5], paths[0], paths[1]]))
    assert batches.batch_paths()[1] == [paths[4], paths[5], paths[0], paths[1]]


def test_batch_larger_than_the_folder_wraps_around(coco_images):
    paths = list_images(coco_images)
    out = list(CalibrationBatches(coco_images, 320, batch_size=8, letter_box=False))
    assert len(out) == 1 and out[0].shape == (8, 3, 320, 320)
    np.testing.assert_array_equal(out[0], reference(paths + paths[:2], 320))


def test_drop_leaves_the_remainder_out(coco_images):
    paths = list_images(coco_images)
    batches = CalibrationBatches(coco_images, SIZE, batch_size=4, last="drop", letter_box=False)
    out = list(batches)
    assert len(batches) == len(out) == 1
    np.testing.assert_array_equal(out[0], reference(paths[:4]))
    with pytest.raises(ValueError, match=r"6 image\(s\), fewer than batch_size=8"):
        CalibrationBatches(coco_images, SIZE, batch_size=8, last="drop", letter_box=False)


def test_max_images(coco_images):
    batches = CalibrationBatches(coco_images, SIZE, batch_size=2, max_images=5, letter_box=False)
    assert batches.num_images == 5 and len(batches) == 3
    assert [p.name for p in batches.batch_paths()[2]] == [batches.paths[4].name, batches.paths[0].name]


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        CalibrationBatches(missing, SIZE, batch_size=2, letter_box=False)


def test_folder_without_images_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("no pictures here")
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path}.*no .jpg/.jpeg/.png images"):
        CalibrationBatches(tmp_path, SIZE, batch_size=2, letter_box=False)


def test_only_image_files_are_used(tmp_path, coco_images):
    src = sorted(coco_images.glob("*.jpg"))
    shutil.copy(src[0], tmp_path / "b.JPG")
    cv2.imwrite(str(tmp_path / "a.png"), cv2.imread(str(src[1])))
    (tmp_path / "c.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG"]
    out = list(CalibrationBatches(tmp_path, SIZE, batch_size=2, letter_box=False))
    np.testing.assert_array_equal(out[0], reference([tmp_path / "a.png", src[0]]))


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    batches = CalibrationBatches(tmp_path, SIZE, batch_size=1, letter_box=False)
    with pytest.raises(ValueError, match="broken.jpg"):
        list(batches)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"input_size_px": 0}, "input_size_px"),
        ({"last": "zeros"}, "last"),
        ({"max_images": 0}, "max_images"),
    ],
)
def test_bad_arguments_are_named(coco_images, kwargs, name):
    args = {"input_size_px": SIZE, "batch_size": 2, "letter_box": False, **kwargs}
    with pytest.raises(ValueError, match=name):
        CalibrationBatches(coco_images, **args)


def test_fingerprint_follows_the_image_set(tmp_path, coco_images):
    for p in sorted(coco_images.glob("*.jpg"))[:3]:
        shutil.copy(p, tmp_path / p.name)
    fp = CalibrationBatches(tmp_path, SIZE, 2, letter_box=False).fingerprint()
    assert fp == CalibrationBatches(tmp_path, SIZE, 2, letter_box=False).fingerprint()
    assert fp != CalibrationBatches(tmp_path, 320, 2, letter_box=False).fingerprint()
    assert fp != CalibrationBatches(tmp_path, SIZE, 3, letter_box=False).fingerprint()
    assert fp != CalibrationBatches(tmp_path, SIZE, 2, letter_box=True).fingerprint()
    victim = sorted(tmp_path.glob("*.jpg"))[0]
    image = cv2.imread(str(victim))
    image[0, 0] = 255 - image[0, 0]
    cv2.imwrite(str(victim), image)
    assert CalibrationBatches(tmp_path, SIZE, 2, letter_box=False).fingerprint() != fp


def test_no_tensorrt_import_at_module_level():
    code = (
        "import sys, pipeline.models.calibration, pipeline.models.engine_cache; "
        "print(sorted(m for m in ('tensorrt', 'pycuda') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[]"


def test_calibrator_without_tensorrt_says_what_to_install(coco_images, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails even on a GPU host
    with pytest.raises(BackendUnavailable, match=r"pip install 'lookout\[tensorrt\]'"):
        make_entropy_calibrator(CalibrationBatches(coco_images, SIZE, 2, letter_box=False), "unused.calib")


# A stand-in for the two library entry points the calibrator touches; the data path is real.
class _FakeDeviceMemory:
    def __init__(self, nbytes: int):
        self.data = bytearray(nbytes)
        self.freed = False

    def __int__(self) -> int:
        return id(self)

    def free(self) -> None:
        self.freed = True


@pytest.fixture
def fake_trt(monkeypatch):
    allocations: list[_FakeDeviceMemory] = []

    class IInt8EntropyCalibrator2:
        def __init__(self):
            self.base_initialised = True

    def memcpy_htod(dest, src):
        src = np.ascontiguousarray(src)
        assert src.nbytes == len(dest.data), "copy size differs from the device buffer"
        dest.data[:] = src.tobytes()

    def mem_alloc(nbytes):
        allocations.append(_FakeDeviceMemory(nbytes))
        return allocations[-1]

    trt = types.ModuleType("tensorrt")
    trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    driver = types.ModuleType("pycuda.driver")
    driver.mem_alloc, driver.memcpy_htod = mem_alloc, memcpy_htod
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    return allocations


def test_calibrator_feeds_every_batch_through_one_device_buffer(coco_images, tmp_path, fake_trt):
    batches = CalibrationBatches(coco_images, 320, batch_size=4, letter_box=False)
    cache = tmp_path / "engine.calib"
    calib = make_entropy_calibrator(batches, cache)
    assert isinstance(calib, sys.modules["tensorrt"].IInt8EntropyCalibrator2) and calib.base_initialised
    assert calib.get_batch_size() == 4
    assert calib.read_calibration_cache() is None
    expected = list(batches)
    for want in expected:
        ptrs = calib.get_batch(["images"])
        assert len(ptrs) == 1 and len(fake_trt) == 1 and ptrs[0] == int(fake_trt[0])
        got = np.frombuffer(bytes(fake_trt[0].data), np.float32).reshape(want.shape)
        np.testing.assert_array_equal(got, want)
    assert calib.get_batch(["images"]) is None
    assert fake_trt[0].freed
    calib.write_calibration_cache(memoryview(b"TRT-8.6 calibration table"))
    assert cache.read_bytes() == b"TRT-8.6 calibration table"
    assert make_entropy_calibrator(batches, cache).read_calibration_cache() == b"TRT-8.6 calibration table"


def test_a_strip_model_calibrates_on_strips_of_the_full_models_fit(coco_images):
    """A strip model (pipeline.regions) sees columns of frames fitted to the full model: so does its
    calibration (left, middle and right strips of each image), and its cache key differs."""
    full = CalibrationBatches(coco_images, SIZE, batch_size=1, max_images=2, letter_box=False)
    strips = CalibrationBatches(
        coco_images, (128, SIZE), batch_size=1, max_images=2, letter_box=False, strip_of_px=(SIZE, SIZE)
    )
    out = list(strips)
    assert len(out) == 6 and all(b.shape == (1, 3, SIZE, 128) for b in out)
    fitted = reference(list_images(coco_images)[:1])[0]  # (3, 416, 416)
    for batch, x0 in zip(out[:3], (0, (SIZE - 128) // 2, SIZE - 128)):
        np.testing.assert_allclose(batch[0], fitted[:, :, x0 : x0 + 128], atol=0.5 / 255)
    assert (
        strips.fingerprint()
        != CalibrationBatches(coco_images, (128, SIZE), batch_size=1, max_images=2, letter_box=False).fingerprint()
    )
    assert full.fingerprint() != strips.fingerprint()
    with pytest.raises(ValueError, match="strip_of_px needs batch_size 1"):
        CalibrationBatches(coco_images, (128, SIZE), batch_size=2, letter_box=False, strip_of_px=(SIZE, SIZE))
