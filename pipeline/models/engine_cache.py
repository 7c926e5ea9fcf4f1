"""The per-node TensorRT engine cache: one file per EngineKey, built once per node, never half-written.

Several replicas on one node may start together. `ensure_engine` takes an exclusive `fcntl.flock`
on `<slug>.lock` in the cache folder, so exactly one process builds while the others wait and then
load the finished file. The engine is written to a temporary file in the same folder and renamed
into place, so a file at `engine_path(...)` is always complete. No TensorRT import here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"
CALIB_SUFFIX = ".calib"
LOCK_SUFFIX = ".lock"
_TMP_SUFFIX = ".tmp"
_WAIT_LOG_EVERY_S = 30.0

BuildFn = Callable[[Path], "dict[str, Any] | None"]


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on; two equal keys may share one engine file.

    `calib` is a fingerprint of the INT8 calibration images (empty for fp32/fp16).
    """

    onnx_sha256: str
    trt_version: str
    gpu_name: str
    precision: str
    max_batch: int
    input_size_px: int
    calib: str = ""

    def __post_init__(self) -> None:
        for name in ("onnx_sha256", "trt_version", "gpu_name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"EngineKey.{name} must be a non-empty string, got {value!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"EngineKey.precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("max_batch", "input_size_px"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EngineKey.{name} must be a positive integer, got {value!r}")

    @property
    def digest(self) -> str:
        """sha256 of every field: tells apart keys whose readable slug parts look alike."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @property
    def slug(self) -> str:
        """A filesystem-safe, human-readable and unique name for this key."""
        parts = [
            self.onnx_sha256[:16],
            f"trt{self.trt_version}",
            _safe(self.gpu_name)[:40],
            self.precision,
            f"b{self.max_batch}",
            f"s{self.input_size_px}",
        ]
        if self.calib:
            parts.append(f"c{_safe(self.calib)[:12]}")
        parts.append(self.digest[:12])
        return "_".join(_safe(p) for p in parts)

    @property
    def filename(self) -> str:
        return self.slug + ENGINE_SUFFIX


def _safe(text: str) -> str:
    return re.sub(r"[^a-z0-9.\-]+", "-", text.lower()).strip("-.") or "x"


def engine_path(cache_dir: str | Path, key: EngineKey) -> Path:
    """Where the engine for `key` lives in `cache_dir`."""
    return Path(cache_dir) / key.filename


def sidecar_path(cache_dir: str | Path, key: EngineKey) -> Path:
    """The JSON written beside the engine: key, build time, host and build settings."""
    return Path(cache_dir) / (key.slug + SIDECAR_SUFFIX)


def calibration_cache_path(cache_dir: str | Path, key: EngineKey) -> Path:
    """Where the INT8 calibration cache for `key` is kept (next to the engine)."""
    return Path(cache_dir) / (key.slug + CALIB_SUFFIX)


def read_sidecar(cache_dir: str | Path, key: EngineKey) -> dict[str, Any] | None:
    """The sidecar of `key`'s engine, or None when there is none (or it cannot be read)."""
    try:
        return json.loads(sidecar_path(cache_dir, key).read_text())
    except (OSError, ValueError):
        return None


def read_sidecar_for(engine_file: str | Path) -> dict[str, Any] | None:
    """The sidecar beside an engine file, found from the file's name alone."""
    engine_file = Path(engine_file)
    if engine_file.suffix != ENGINE_SUFFIX:
        return None
    try:
        return json.loads(engine_file.with_suffix(SIDECAR_SUFFIX).read_text())
    except (OSError, ValueError):
        return None


class LockTimeout(TimeoutError):
    """Another process held the engine's lock for longer than allowed."""


@contextlib.contextmanager
def exclusive_lock(lock_path: str | Path, timeout_s: float | None = None, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on `lock_path` (created if needed); yields False only when not blocking
    and the lock is taken. The lock dies with the process, so a crashed builder never wedges others."""
    fd = _acquire(Path(lock_path), timeout_s, blocking)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _acquire(lock_path: Path, timeout_s: float | None, blocking: bool) -> int | None:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    next_log = time.monotonic() + _WAIT_LOG_EVERY_S
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while not _try_flock(fd):
                if not blocking:
                    os.close(fd)
                    return None
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise LockTimeout(
                        f"engine lock {lock_path} still held by another process after "
                        f"{timeout_s}s (lock_timeout_s={timeout_s})"
                    )
                if now >= next_log:
                    log.info("waiting for another process to finish building (lock %s)", lock_path)
                    next_log = now + _WAIT_LOG_EVERY_S
                time.sleep(0.05)
            # The lock file may have been pruned (unlinked) while we waited on the old inode.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _remove_stale_temps(cache_dir: Path, slug: str) -> None:
    """Temporary files of `slug` left by a crashed builder (call only while holding its lock)."""
    for tmp in cache_dir.glob(f".{slug}.*{_TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def ensure_engine(
    key: EngineKey, cache_dir: str | Path, build_fn: BuildFn, lock_timeout_s: float | None = None
) -> Path:
    """The engine file for `key`, calling `build_fn(tmp_path)` only when it is missing.

    `build_fn` writes the serialized engine to `tmp_path` and may return a dict of build settings
    for the sidecar. If it raises, nothing is cached and the error propagates. At most one process
    per cache folder builds a given key at a time; the others wait for it and reuse its file.
    """
    cache_dir = Path(cache_dir)
    final = engine_path(cache_dir, key)
    if final.is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = cache_dir / (key.slug + LOCK_SUFFIX)
    with exclusive_lock(lock, timeout_s=lock_timeout_s):
        if final.is_file():
            log.info("engine %s was built by another process; reusing it", final.name)
            return final
        _remove_stale_temps(cache_dir, key.slug)
        fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{key.slug}.", suffix=_TMP_SUFFIX)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            log.info("building engine %s", final.name)
            t0 = time.monotonic()
            info = build_fn(tmp)
            build_s = time.monotonic() - t0
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise RuntimeError(f"build_fn wrote no engine for {key.slug} (expected bytes in {tmp})")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            sidecar = {
                "key": asdict(key),
                "slug": key.slug,
                "file": final.name,
                "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "build_s": round(build_s, 3),
                "host": platform.node(),
                "pid": os.getpid(),
                "bytes": tmp.stat().st_size,
                "build": info or {},
            }
            atomic_write_bytes(sidecar_path(cache_dir, key), json.dumps(sidecar, indent=2, default=str).encode())
            os.replace(tmp, final)
            _fsync_dir(cache_dir)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        log.info("engine %s built in %.1fs", final.name, build_s)
        return final


def remove_engine(cache_dir: str | Path, key: EngineKey, lock_timeout_s: float | None = None) -> bool:
    """Delete `key`'s engine, sidecar and calibration cache (under its lock); True if an engine was there."""
    cache_dir = Path(cache_dir)
    final = engine_path(cache_dir, key)
    if not cache_dir.is_dir():
        return False
    with exclusive_lock(cache_dir / (key.slug + LOCK_SUFFIX), timeout_s=lock_timeout_s):
        existed = final.is_file()
        for p in (final, sidecar_path(cache_dir, key), calibration_cache_path(cache_dir, key)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return existed


def prune_engines(cache_dir: str | Path, keep: Iterable[EngineKey]) -> list[Path]:
    """Delete cached engines (and their sidecars, calibration caches, locks) for keys not in `keep`.

    Engines being built right now (lock held) are skipped. Returns the engine files removed.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    keep_slugs = {k.slug for k in keep}
    slugs = {p.name[: -len(ENGINE_SUFFIX)] for p in cache_dir.glob(f"*{ENGINE_SUFFIX}")}
    slugs |= {p.name[: -len(LOCK_SUFFIX)] for p in cache_dir.glob(f"*{LOCK_SUFFIX}")}
    removed: list[Path] = []
    for slug in sorted(slugs - keep_slugs):
        lock = cache_dir / (slug + LOCK_SUFFIX)
        with exclusive_lock(lock, blocking=False) as got:
            if not got:
                log.info("not pruning %s: it is being built", slug)
                continue
            engine = cache_dir / (slug + ENGINE_SUFFIX)
            if engine.is_file():
                engine.unlink()
                removed.append(engine)
            for suffix in (SIDECAR_SUFFIX, CALIB_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    (cache_dir / (slug + suffix)).unlink()
            _remove_stale_temps(cache_dir, slug)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
    return removed


__all__ = [
    "EngineKey",
    "LockTimeout",
    "PRECISIONS",
    "atomic_write_bytes",
    "calibration_cache_path",
    "engine_path",
    "ensure_engine",
    "exclusive_lock",
    "prune_engines",
    "read_sidecar",
    "read_sidecar_for",
    "remove_engine",
    "sidecar_path",
]
