"""Where recorded segments live: a local directory or an S3-compatible bucket.

Each object is a standalone fragmented MP4 (the run's init section, then the segment's moof/mdat
fragments) under `<camera>/<YYYY-MM-DD>/<HH>/<start_ms>_<dur_ms>_<run_id>.mp4` (UTC date and hour of
the segment's start). The key alone says camera, start, duration and run, so an index can be rebuilt
from a listing. Store failures (disk full, permissions, an unreachable bucket) raise
`RecordStoreError`, whose message names the key; nothing else escapes a store method.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from hls.fmp4 import Mp4Error, box_header
from pipeline.config import CAMERA_ID_RE, RecordConfig, S3Config
from pipeline.logutil import scrub_url

log = logging.getLogger(__name__)

RUN_ID_RE = re.compile(r"^[A-Za-z0-9-]+$")
_KEY_RE = re.compile(
    r"^(?P<camera>[a-z0-9][a-z0-9_-]{0,62})/(?P<date>\d{4}-\d{2}-\d{2})/(?P<hour>\d{2})/"
    r"(?P<start_ms>\d{1,15})_(?P<dur_ms>\d{1,9})_(?P<run_id>[A-Za-z0-9-]{1,64})\.mp4$"
)
# What a list() prefix may look like: a leading part of a key, never a path escape.
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_./-]*$")
FILE_MODE = 0o640
DIR_MODE = 0o750


class RecordStoreError(RuntimeError):
    """A store operation failed (disk full, permission, store unreachable); the message names the key."""


@dataclass(frozen=True)
class RecordedSegment:
    """One recorded segment: camera, wall-clock start (PROGRAM-DATE-TIME), duration, size, key, run."""

    camera_id: str
    start_s: float
    duration_s: float
    size_bytes: int
    key: str
    run_id: str

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


def _utc(t_s: float) -> datetime:
    return datetime.fromtimestamp(t_s, tz=timezone.utc)


def hour_prefix(camera_id: str, t_s: float) -> str:
    """`<camera>/<date>/<hour>/`: the folder of segments starting in that UTC hour."""
    return f"{camera_id}/{_utc(t_s):%Y-%m-%d/%H}/"


def hour_prefixes(camera_id: str, since_s: float, until_s: float) -> list[str]:
    """The hour prefixes of every UTC hour from `since_s` to `until_s` (both included)."""
    out, t = [], int(since_s // 3600) * 3600
    while t <= until_s:
        out.append(hour_prefix(camera_id, t))
        t += 3600
    return out


def segment_key(camera_id: str, start_s: float, duration_s: float, run_id: str) -> str:
    """The store key of a segment; ValueError naming the value when an argument is invalid."""
    if not isinstance(camera_id, str) or not CAMERA_ID_RE.match(camera_id):
        raise ValueError(f"invalid camera id {camera_id!r}")
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or len(run_id) > 64:
        raise ValueError(f"invalid run_id {run_id!r} (letters, digits and '-', at most 64)")
    if not start_s >= 0:
        raise ValueError(f"invalid start_s {start_s!r}")
    if not 0 <= duration_s < 1e6:
        raise ValueError(f"invalid duration_s {duration_s!r}")
    start_ms = int(round(start_s * 1000))
    return f"{hour_prefix(camera_id, start_ms / 1000)}{start_ms}_{int(round(duration_s * 1000))}_{run_id}.mp4"


def parse_segment_key(key: str, size_bytes: int) -> RecordedSegment | None:
    """The segment a key names, or None when it is not a segment key (or its folder disagrees with it)."""
    m = _KEY_RE.match(key) if isinstance(key, str) else None
    if m is None:
        return None
    start_ms = int(m["start_ms"])
    if hour_prefix(m["camera"], start_ms / 1000) != key[: key.rindex("/") + 1]:
        return None
    return RecordedSegment(m["camera"], start_ms / 1000, int(m["dur_ms"]) / 1000, int(size_bytes), key, m["run_id"])


def split_init(data: bytes) -> tuple[bytes, bytes]:
    """(init section, media fragments) of a standalone fMP4: split at the first top-level `moof`."""
    pos = 0
    while pos < len(data):
        try:
            h = box_header(data, pos)
        except Mp4Error as e:
            raise Mp4Error(f"not a fragmented MP4 segment: {e}") from e
        if h is None or pos + h[2] > len(data):
            raise Mp4Error(f"not a fragmented MP4 segment: truncated box at byte {pos}")
        if h[0] == b"moof":
            if pos == 0:
                break
            return data[:pos], data[pos:]
        pos += h[2]
    raise Mp4Error("not a fragmented MP4 segment: no init section before a moof box")


def check_key(key: str) -> str:
    """Return `key` if it is a valid segment key, else raise ValueError naming it."""
    if parse_segment_key(key, 0) is None:
        raise ValueError(f"invalid recording key {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix) or ".." in prefix or prefix.startswith("/"):
        raise ValueError(f"invalid recording prefix {prefix!r}")
    return prefix


class RecordStore(ABC):
    """Recorded segments by key (see `segment_key`)."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store a whole segment; the object appears at once, complete (or not at all)."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The segment's bytes, or None when it does not exist."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete segments; missing ones are not an error."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every segment whose key starts with `prefix` ("" for all)."""

    def free_bytes(self) -> int | None:
        """Free space left for recordings; None when unknown or unbounded (object stores)."""
        return None

    def local_path(self, key: str) -> str | None:
        """The segment's file (local store only; it may not exist), else None."""
        return None

    def describe(self) -> str:
        """Where the store is, for log lines (never a credential)."""
        return type(self).__name__


class LocalRecordStore(RecordStore):
    """Segments as files under `root_dir` (files 0640, folders 0750; written to a temp file, then renamed)."""

    def __init__(self, root_dir: str | os.PathLike):
        self.root = Path(root_dir)

    def describe(self) -> str:
        return f"local:{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> str | None:
        return str(self._path(key))

    def _makedirs(self, d: Path) -> None:
        missing = []
        p = d
        while not p.exists():
            missing.append(p)
            if p.parent == p:
                break
            p = p.parent
        d.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        for p in missing:  # mkdir's mode passes through the umask; the folders must be exactly 0750
            try:
                os.chmod(p, DIR_MODE)
            except FileNotFoundError:
                pass

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        for attempt in range(2):
            try:
                self._write(path, data)
                return
            except FileNotFoundError:
                # A concurrent delete() removed the just-emptied hour folder between mkdir and write.
                if attempt:
                    raise RecordStoreError(f"cannot write recording {key} to {path}: folder vanished") from None
            except OSError as e:
                raise RecordStoreError(
                    f"cannot write recording {key} to {path}: {e.strerror or e} (errno {e.errno})"
                ) from None

    def _write(self, path: Path, data: bytes) -> None:
        self._makedirs(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # a crash after the rename must not leave an empty "complete" segment
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RecordStoreError(f"cannot read recording {key} at {path}: {e.strerror or e}") from None

    def delete(self, keys: list[str]) -> None:
        folders: set[Path] = set()
        failed = []
        for key in keys:
            path = self._path(key)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                failed.append(f"{key}: {e.strerror or e}")
                continue
            folders.add(path.parent)
        for hour in sorted(folders, reverse=True):
            for d in (hour, hour.parent):  # the hour folder, then its day folder, when empty
                try:
                    d.rmdir()
                except OSError:
                    break
        if failed:
            raise RecordStoreError(
                f"cannot delete {len(failed)} recording(s) under {self.root}: " + "; ".join(failed[:5])
            )

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        _check_prefix(prefix)
        # Walk only the deepest folder the prefix names in full.
        base = prefix[: prefix.rfind("/") + 1]
        top = self.root / base if base else self.root
        try:
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                rel = os.path.relpath(dirpath, self.root)
                rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
                for name in sorted(filenames):
                    key = rel + name
                    if not key.startswith(prefix) or not name.endswith(".mp4") or _KEY_RE.match(key) is None:
                        continue
                    try:
                        size = os.stat(os.path.join(dirpath, name)).st_size
                    except FileNotFoundError:
                        continue  # deleted while listing
                    yield key, size
        except OSError as e:
            raise RecordStoreError(f"cannot list recordings under {top}: {e.strerror or e}") from None

    def free_bytes(self) -> int | None:
        p = self.root
        while not p.exists() and p.parent != p:
            p = p.parent
        try:
            return shutil.disk_usage(p).free
        except OSError:
            return None


class S3RecordStore(RecordStore):
    """Segments as objects in an S3-compatible bucket (path-style addressing; the bucket is created if missing).

    Credentials: the config's, else $LOOKOUT_S3_ACCESS_KEY_ID / $LOOKOUT_S3_SECRET_ACCESS_KEY, else boto3's chain.
    """

    page_size = 1000  # keys per ListObjectsV2 call

    def __init__(self, cfg: S3Config):
        import boto3
        from botocore.config import Config

        self.cfg = cfg
        access = cfg.access_key_id or os.environ.get("LOOKOUT_S3_ACCESS_KEY_ID") or None
        secret = (
            (cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None)
            or os.environ.get("LOOKOUT_S3_SECRET_ACCESS_KEY")
            or None
        )
        creds = {"aws_access_key_id": access, "aws_secret_access_key": secret} if access and secret else {}
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            region_name=cfg.region,
            **creds,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=cfg.timeout_s,
                read_timeout=cfg.timeout_s,
                retries={"max_attempts": 2, "mode": "standard"},
                signature_version="s3v4",
            ),
        )
        self._bucket_ok = False

    def describe(self) -> str:
        return scrub_url(f"s3:{self.cfg.endpoint_url or 'aws'}/{self.cfg.bucket}/{self.cfg.prefix}")

    def _err(self, what: str, key: str, e: Exception) -> RecordStoreError:
        code = (getattr(e, "response", None) or {}).get("Error", {}).get("Code")
        detail = f"{code}: {e}" if code else str(e)
        return RecordStoreError(scrub_url(f"cannot {what} recording {key} in {self.describe()}: {detail}"))

    def _ensure_bucket(self, key: str) -> None:
        if self._bucket_ok:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.cfg.bucket)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise self._err("reach the bucket for", key, e) from None
            try:
                self._client.create_bucket(Bucket=self.cfg.bucket)
                log.info("created S3 bucket %s at %s for recordings", self.cfg.bucket, self.cfg.endpoint_url or "aws")
            except ClientError as e2:
                if e2.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise self._err("create the bucket for", key, e2) from None
            except BotoCoreError as e2:
                raise self._err("create the bucket for", key, e2) from None
        except BotoCoreError as e:
            raise self._err("reach the bucket for", key, e) from None
        self._bucket_ok = True

    def _obj(self, key: str) -> str:
        return self.cfg.prefix + check_key(key)

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        obj = self._obj(key)
        for attempt in range(2):
            self._ensure_bucket(key)
            try:
                self._client.put_object(Bucket=self.cfg.bucket, Key=obj, Body=data, ContentType="video/mp4")
                return
            except ClientError as e:
                if attempt == 0 and e.response.get("Error", {}).get("Code") == "NoSuchBucket":
                    self._bucket_ok = False  # deleted since: make it again
                    continue
                raise self._err("write", key, e) from None
            except BotoCoreError as e:
                raise self._err("write", key, e) from None

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        obj = self._obj(key)
        try:
            return self._client.get_object(Bucket=self.cfg.bucket, Key=obj)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound", "NoSuchBucket"):
                return None
            raise self._err("read", key, e) from None
        except BotoCoreError as e:
            raise self._err("read", key, e) from None

    def delete(self, keys: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        objs = [self._obj(k) for k in keys]
        for i in range(0, len(objs), 1000):
            batch = objs[i : i + 1000]
            try:
                r = self._client.delete_objects(
                    Bucket=self.cfg.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") == "NoSuchBucket":
                    return
                raise self._err("delete", batch[0], e) from None
            except BotoCoreError as e:
                raise self._err("delete", batch[0], e) from None
            errors = [x for x in r.get("Errors", []) if x.get("Code") != "NoSuchKey"]
            if errors:
                raise RecordStoreError(
                    f"cannot delete {len(errors)} recording(s) in {self.describe()}: "
                    + "; ".join(f"{x.get('Key')}: {x.get('Code')}" for x in errors[:5])
                )

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        from botocore.exceptions import BotoCoreError, ClientError

        _check_prefix(prefix)
        full = self.cfg.prefix + prefix
        n = len(self.cfg.prefix)
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.cfg.bucket, Prefix=full, PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                for o in page.get("Contents", []):
                    key = o["Key"][n:]
                    if _KEY_RE.match(key):
                        yield key, int(o["Size"])
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return
            raise self._err("list", full or "(all)", e) from None
        except BotoCoreError as e:
            raise self._err("list", full or "(all)", e) from None


def make_record_store(cfg: RecordConfig, resolve_path: Callable[[str], str]) -> RecordStore:
    """The store `cfg.store` names: local (under `resolve_path(cfg.dir)`) or S3."""
    if cfg.store == "s3":
        assert cfg.s3 is not None  # RecordConfig checks it
        return S3RecordStore(cfg.s3)
    return LocalRecordStore(resolve_path(cfg.dir))


def default_index_path(cfg: RecordConfig, resolve_path: Callable[[str], str]) -> str:
    """Where the node's SQLite index goes: `index_path`, else `<dir>/index.sqlite3`."""
    return resolve_path(cfg.index_path) if cfg.index_path else os.path.join(resolve_path(cfg.dir), "index.sqlite3")


def new_run_id(run: int, now_s: float | None = None) -> str:
    """A run id unique per ffmpeg run: `<epoch_ms>-r<run number>`."""
    return f"{int((time.time() if now_s is None else now_s) * 1000)}-r{run}"
