"""The engine cache: keys, build-once-per-node locking across processes, atomic files, pruning."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pipeline.models.engine_cache import (
    EngineKey,
    LockTimeout,
    calibration_cache_path,
    engine_path,
    ensure_engine,
    exclusive_lock,
    prune_engines,
    read_sidecar,
    read_sidecar_for,
    remove_engine,
    sidecar_path,
)

KEY = EngineKey(
    onnx_sha256="ab" * 32,
    trt_version="10.3.0",
    gpu_name="NVIDIA GeForce RTX 4090",
    precision="fp16",
    max_batch=8,
    input_size_px=416,
)
PAYLOAD = b"ENGINE" * 200_000  # 1.2 MB


def key(**changes) -> EngineKey:
    return dataclasses.replace(KEY, **changes)


# ----- keys ---------------------------------------------------------------------------------------


def test_key_is_stable():
    again = EngineKey("ab" * 32, "10.3.0", "NVIDIA GeForce RTX 4090", "fp16", 8, 416)
    assert again == KEY
    assert again.slug == KEY.slug and again.filename == KEY.filename and again.digest == KEY.digest
    assert KEY.filename == KEY.slug + ".engine"


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "cd" * 32},
        {"trt_version": "10.4.0"},
        {"gpu_name": "NVIDIA H100 80GB HBM3"},
        {"precision": "int8"},
        {"precision": "fp32"},
        {"max_batch": 4},
        {"input_size_px": 608},
        {"calib": "0123456789abcdef"},
    ],
)
def test_key_changes_with_each_component(change):
    other = key(**change)
    assert other != KEY
    assert other.slug != KEY.slug
    assert engine_path("/c", other) != engine_path("/c", KEY)


def test_slug_only_differs_by_hash_when_readable_parts_collide():
    a, b = key(gpu_name="Tesla T4"), key(gpu_name="tesla-t4")
    assert a.slug != b.slug
    assert a.slug.rsplit("_", 1)[0] == b.slug.rsplit("_", 1)[0]


def test_slug_is_filesystem_safe(tmp_path):
    weird = key(gpu_name='NVIDIA/GeForce: RTX*4090 "Ti" ../..\\x' + "y" * 300, trt_version="10.3.0.26+cu12")
    slug = weird.slug
    assert all(c.isalnum() and c.islower() or c.isdigit() or c in "._-" for c in slug), slug
    assert "/" not in slug and ".." not in slug.split("_")
    assert len(weird.filename) < 200
    p = engine_path(tmp_path, weird)
    p.write_bytes(b"x")
    assert p.parent == tmp_path and p.read_bytes() == b"x"


@pytest.mark.parametrize(
    "field,value",
    [
        ("precision", "int4"),
        ("max_batch", 0),
        ("max_batch", True),
        ("input_size_px", -416),
        ("gpu_name", " "),
        ("onnx_sha256", ""),
    ],
)
def test_bad_key_fields_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        key(**{field: value})


# ----- ensure_engine in one process ---------------------------------------------------------------


def test_builds_once_then_reuses(tmp_path):
    calls = []

    def build(tmp: Path):
        calls.append(tmp)
        assert tmp.parent == tmp_path  # same folder, so the rename is atomic
        tmp.write_bytes(PAYLOAD)
        return {"workspace_mb": 1024}

    first = ensure_engine(KEY, tmp_path, build)
    second = ensure_engine(KEY, tmp_path, build)
    assert first == second == engine_path(tmp_path, KEY)
    assert len(calls) == 1
    assert first.read_bytes() == PAYLOAD
    side = read_sidecar(tmp_path, KEY)
    assert side == read_sidecar_for(first)
    assert side["key"] == dataclasses.asdict(KEY)
    assert side["build"] == {"workspace_mb": 1024}
    assert side["bytes"] == len(PAYLOAD) and side["built_at"] and side["build_s"] >= 0
    assert sidecar_path(tmp_path, KEY).is_file()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_other_keys_are_built_separately_and_left_alone(tmp_path):
    a = ensure_engine(KEY, tmp_path, lambda p: p.write_bytes(b"a"))
    b = ensure_engine(key(precision="int8"), tmp_path, lambda p: p.write_bytes(b"b"))
    assert a != b and a.read_bytes() == b"a" and b.read_bytes() == b"b"


def test_failed_build_caches_nothing(tmp_path):
    def broken(tmp: Path):
        tmp.write_bytes(PAYLOAD[:1000])
        raise RuntimeError("builder crashed half way")

    with pytest.raises(RuntimeError, match="half way"):
        ensure_engine(KEY, tmp_path, broken)
    assert not engine_path(tmp_path, KEY).exists()
    assert not sidecar_path(tmp_path, KEY).exists()
    assert [p.name for p in tmp_path.iterdir()] == [KEY.slug + ".lock"]
    # The lock was released: the next attempt builds.
    assert ensure_engine(KEY, tmp_path, lambda p: p.write_bytes(b"ok")).read_bytes() == b"ok"


def test_build_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="wrote no engine"):
        ensure_engine(KEY, tmp_path, lambda p: None)
    assert not engine_path(tmp_path, KEY).exists()


def test_no_partial_file_is_ever_visible(tmp_path):
    """A reader polling the final path while the build writes slowly sees nothing, then everything."""
    final = engine_path(tmp_path, KEY)
    seen_sizes: list[int] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                seen_sizes.append(len(final.read_bytes()))
            except FileNotFoundError:
                seen_sizes.append(-1)

    def slow_build(tmp: Path):
        with open(tmp, "wb") as f:
            for i in range(0, len(PAYLOAD), 100_000):
                f.write(PAYLOAD[i : i + 100_000])
                f.flush()
                time.sleep(0.01)
        time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    try:
        ensure_engine(KEY, tmp_path, slow_build)
        time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    assert -1 in seen_sizes and len(PAYLOAD) in seen_sizes
    assert set(seen_sizes) <= {-1, len(PAYLOAD)}, sorted(set(seen_sizes))
    first_full = seen_sizes.index(len(PAYLOAD))
    assert all(s == len(PAYLOAD) for s in seen_sizes[first_full:])


def test_lock_timeout_names_the_lock(tmp_path):
    lock = tmp_path / (KEY.slug + ".lock")
    with exclusive_lock(lock):
        with pytest.raises(LockTimeout, match="lock_timeout_s=0.3"):
            ensure_engine(KEY, tmp_path, lambda p: p.write_bytes(b"x"), lock_timeout_s=0.3)
    assert not engine_path(tmp_path, KEY).exists()


# ----- several processes --------------------------------------------------------------------------


def _replica(cache_dir: str, log_file: str, barrier, results) -> None:
    """One 'replica' starting up: wait for the others, then ask for the engine."""

    def build(tmp: Path):
        with open(log_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough that the others arrive while this one builds
        tmp.write_bytes(PAYLOAD)

    barrier.wait()
    path = ensure_engine(KEY, cache_dir, build)
    results.put((os.getpid(), str(path), len(Path(path).read_bytes())))


def test_four_processes_build_exactly_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    log_file = tmp_path / "builds.log"
    cache = tmp_path / "engines"
    procs = [ctx.Process(target=_replica, args=(str(cache), str(log_file), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    builders = log_file.read_text().split()
    assert len(builders) == 1, f"built {len(builders)} times by {builders}"
    assert {g[0] for g in got} == {p.pid for p in procs}
    assert {g[1] for g in got} == {str(engine_path(cache, KEY))}
    assert {g[2] for g in got} == {len(PAYLOAD)}
    assert read_sidecar(cache, KEY)["pid"] == int(builders[0])


def _crashing_builder(cache_dir: str, started) -> None:
    def build(tmp: Path):
        tmp.write_bytes(PAYLOAD[:5000])
        started.set()
        time.sleep(60)

    ensure_engine(KEY, cache_dir, build)


def test_killed_builder_leaves_no_engine_and_no_lock(tmp_path):
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    proc = ctx.Process(target=_crashing_builder, args=(str(tmp_path), started))
    proc.start()
    try:
        assert started.wait(30)
        assert not engine_path(tmp_path, KEY).exists()
        assert len(list(tmp_path.glob(".*.tmp"))) == 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
    path = ensure_engine(KEY, tmp_path, lambda p: p.write_bytes(PAYLOAD), lock_timeout_s=5)
    assert path.read_bytes() == PAYLOAD
    assert not list(tmp_path.glob(".*.tmp"))  # the dead builder's temp file was cleaned up


# ----- removal and pruning -------------------------------------------------------------------------


def test_prune_keeps_only_listed_keys(tmp_path):
    keep, old1, old2 = KEY, key(trt_version="10.0.1"), key(max_batch=2)
    for k in (keep, old1, old2):
        ensure_engine(k, tmp_path, lambda p: p.write_bytes(b"e"))
        calibration_cache_path(tmp_path, k).write_bytes(b"calib")
    removed = prune_engines(tmp_path, [keep])
    assert sorted(removed) == sorted([engine_path(tmp_path, old1), engine_path(tmp_path, old2)])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([keep.filename, keep.slug + ".json", keep.slug + ".calib", keep.slug + ".lock"])


def test_prune_skips_an_engine_being_built(tmp_path):
    busy = key(gpu_name="Tesla T4")
    ensure_engine(busy, tmp_path, lambda p: p.write_bytes(b"e"))
    with exclusive_lock(tmp_path / (busy.slug + ".lock")):
        assert prune_engines(tmp_path, []) == []
    assert engine_path(tmp_path, busy).exists()
    assert prune_engines(tmp_path, []) == [engine_path(tmp_path, busy)]
    assert list(tmp_path.iterdir()) == []


def test_remove_engine_then_rebuild(tmp_path):
    ensure_engine(KEY, tmp_path, lambda p: p.write_bytes(b"old"))
    calibration_cache_path(tmp_path, KEY).write_bytes(b"calib")
    assert remove_engine(tmp_path, KEY) is True
    assert not engine_path(tmp_path, KEY).exists() and not calibration_cache_path(tmp_path, KEY).exists()
    assert remove_engine(tmp_path, KEY) is False
    assert ensure_engine(KEY, tmp_path, lambda p: p.write_bytes(b"new")).read_bytes() == b"new"
    assert json.loads(sidecar_path(tmp_path, KEY).read_text())["bytes"] == 3
