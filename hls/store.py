"""Where published HLS segments and playlists are kept, so any gateway replica can serve them.

Names are validated here (the one place every reader and writer goes through): an invalid
camera id or segment name raises ValueError naming the value; the gateway maps it to 404.
"""

from __future__ import annotations

import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from pipeline import keys
from pipeline.config import CAMERA_ID_RE, HlsConfig

SEGMENT_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+\.(ts|m4s|mp4)$")
PLAYLIST_NAME = "index.m3u8"


def check_camera_id(camera_id: str) -> str:
    """Return `camera_id` if it is a valid camera id, else raise ValueError."""
    if not isinstance(camera_id, str) or not CAMERA_ID_RE.match(camera_id):
        raise ValueError(f"invalid camera id {camera_id!r}")
    return camera_id


def check_segment_name(name: str) -> str:
    """Return `name` if it is a valid segment file name (no path, no '..'), else ValueError."""
    if not isinstance(name, str) or ".." in name or not SEGMENT_NAME_RE.match(name):
        raise ValueError(f"invalid segment name {name!r}")
    return name


class HlsStore(ABC):
    """Segments (bytes) and the media playlist (text) of each camera."""

    @abstractmethod
    def put_segment(self, camera_id: str, name: str, data: bytes) -> None: ...

    @abstractmethod
    def get_segment(self, camera_id: str, name: str) -> bytes | None:
        """The segment's bytes, or None when it does not exist (any more)."""

    @abstractmethod
    def delete_segment(self, camera_id: str, name: str) -> None:
        """Delete a segment; deleting a missing one is not an error."""

    @abstractmethod
    def list_segments(self, camera_id: str) -> list[str]:
        """Names of the stored segments, sorted by name."""

    @abstractmethod
    def put_playlist(self, camera_id: str, text: str) -> None: ...

    @abstractmethod
    def get_playlist(self, camera_id: str) -> str | None:
        """The playlist text, or None when there is none."""

    @abstractmethod
    def delete_playlist(self, camera_id: str) -> None:
        """Remove the playlist (a stream that stopped on purpose); a missing one is not an error."""


class RedisHlsStore(HlsStore):
    """Segments and playlists in Redis (keys from pipeline/keys.py), each expiring after
    `ttl_s` unless rewritten, so a stopped camera leaves nothing behind."""

    def __init__(self, redis_client, ttl_s: float):
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
        pool = getattr(redis_client, "connection_pool", None)
        if pool is not None and pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisHlsStore needs a client with decode_responses=False (segments are bytes)")
        self.redis = redis_client
        self.ttl_ms = int(ttl_s * 1000)

    def put_segment(self, camera_id: str, name: str, data: bytes) -> None:
        key = keys.hls_segment(check_camera_id(camera_id), check_segment_name(name))
        self.redis.set(key, data, px=self.ttl_ms)

    def get_segment(self, camera_id: str, name: str) -> bytes | None:
        return self.redis.get(keys.hls_segment(check_camera_id(camera_id), check_segment_name(name)))

    def delete_segment(self, camera_id: str, name: str) -> None:
        self.redis.delete(keys.hls_segment(check_camera_id(camera_id), check_segment_name(name)))

    def list_segments(self, camera_id: str) -> list[str]:
        prefix = keys.hls_segment(check_camera_id(camera_id), "")
        names = (k.decode() if isinstance(k, bytes) else k for k in self.redis.scan_iter(match=prefix + "*"))
        return sorted(n[len(prefix) :] for n in names if SEGMENT_NAME_RE.match(n[len(prefix) :]))

    def put_playlist(self, camera_id: str, text: str) -> None:
        self.redis.set(keys.hls_playlist(check_camera_id(camera_id)), text.encode(), px=self.ttl_ms)

    def get_playlist(self, camera_id: str) -> str | None:
        raw = self.redis.get(keys.hls_playlist(check_camera_id(camera_id)))
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else raw

    def delete_playlist(self, camera_id: str) -> None:
        self.redis.delete(keys.hls_playlist(check_camera_id(camera_id)))


class DirHlsStore(HlsStore):
    """Files under `root_dir/<camera_id>/` (a filesystem shared by all nodes); every write is
    atomic (temporary file + rename), so readers never see a partial file."""

    def __init__(self, root_dir: str | os.PathLike):
        self.root = Path(root_dir)

    def _dir(self, camera_id: str) -> Path:
        return self.root / check_camera_id(camera_id)

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def put_segment(self, camera_id: str, name: str, data: bytes) -> None:
        self._write(self._dir(camera_id) / check_segment_name(name), data)

    def get_segment(self, camera_id: str, name: str) -> bytes | None:
        return self._read(self._dir(camera_id) / check_segment_name(name))

    def delete_segment(self, camera_id: str, name: str) -> None:
        try:
            (self._dir(camera_id) / check_segment_name(name)).unlink()
        except FileNotFoundError:
            pass

    def list_segments(self, camera_id: str) -> list[str]:
        try:
            names = os.listdir(self._dir(camera_id))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith(".") and SEGMENT_NAME_RE.match(n))

    def put_playlist(self, camera_id: str, text: str) -> None:
        self._write(self._dir(camera_id) / PLAYLIST_NAME, text.encode())

    def get_playlist(self, camera_id: str) -> str | None:
        raw = self._read(self._dir(camera_id) / PLAYLIST_NAME)
        return None if raw is None else raw.decode()

    def delete_playlist(self, camera_id: str) -> None:
        try:
            (self._dir(camera_id) / PLAYLIST_NAME).unlink()
        except FileNotFoundError:
            pass


def redis_ttl_s(settings: HlsConfig) -> float:
    """How long Redis keeps a segment: well past the time it spends in the store's window."""
    return max(60.0, 3 * settings.keep_segments * settings.segment_s)


def make_store(settings: HlsConfig, redis_client=None, base_dir: str | None = None) -> HlsStore:
    """The store `settings.store` names; a relative `settings.dir` is taken from `base_dir`."""
    if settings.store == "redis":
        if redis_client is None:
            raise ValueError("hls store 'redis' needs a redis client")
        return RedisHlsStore(redis_client, redis_ttl_s(settings))
    path = Path(os.path.expanduser(settings.dir))
    if not path.is_absolute():
        path = Path(base_dir or os.getcwd()) / path
    return DirHlsStore(path)
