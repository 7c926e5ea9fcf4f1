"""The transcode path's encoder without Ray (hls.encoder_service): frames and detections from a real Redis bus,
boxes burned in, a real ffmpeg, segments in the store; on demand, nothing is encoded until someone watches."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
import redis

from hls.encoder_service import EncoderService
from hls.playlist import MediaPlaylist
from hls.store import RedisHlsStore
from hls.viewers import ViewerTracker
from pipeline.bus import FrameBus, ResultStore
from pipeline.config import parse_args
from pipeline.types import Detections, FrameResult
from rtsp_fixtures import wait_until

FPS = 10


def args_for(redis_server, **camera):
    return parse_args(
        {
            "cameras": [{"id": "cam", "source": "x.avi", "fps": FPS, "boxes": "burned", **camera}],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "hls": {"segment_s": 1, "preset": "ultrafast"},
        }
    ).for_camera("cam")


def feed(client, seconds: float, box: bool) -> None:
    """Frames at FPS in real time (the encoder drops stale ones), each with a detection when `box`."""
    bus, results = FrameBus(client), ResultStore(client)
    for i in range(int(seconds * FPS)):
        ref = bus.put("cam", i, np.full((144, 256, 3), 60, np.uint8), time.time(), i / FPS)
        if box:
            d = Detections(np.array([[40, 40, 120, 120]], np.float32), np.array([0.9]), np.array([0]))
            results.publish([FrameResult(ref, d, "m")], ["person"])
        time.sleep(1 / FPS)


def decoded_frames(segment: bytes) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "-", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
        input=segment,
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, 144, 256, 3)


@pytest.fixture
def client(redis_server):
    c = redis.Redis.from_url(redis_server.url)
    yield c
    c.close()


def test_frames_become_segments_with_boxes_burned_in(redis_server, client):
    service = EncoderService(args_for(redis_server, detect=True), "cam", client)
    try:
        feed(client, 4.0, box=True)
        store = RedisHlsStore(client, 60)
        pl = wait_until(
            lambda: (
                (text := store.get_playlist("cam")) and (p := MediaPlaylist.parse(text)) and len(p.entries) >= 2 and p
            ),
            30,
            0.2,
            "two segments",
        )
        assert all(store.get_segment("cam", e.name) for e in pl.entries)
        frame = decoded_frames(store.get_segment("cam", pl.entries[-1].name))[-1]
        background, edge = frame[130, 200].astype(int), frame[80, 40:43].astype(int)  # the box's left side
        assert np.abs(background - 60).max() <= 12  # the grey frame, through x264
        assert np.abs(edge - 60).max() > 60, edge  # a coloured line where the box is
        stats = service.stats()
        assert stats["encoding"] and stats["frames_out"] >= 2 * FPS
        service.check_health()
    finally:
        service.close()


def test_on_demand_encodes_only_while_watched(redis_server, client):
    service = EncoderService(args_for(redis_server, detect=False, on_demand=True), "cam", client)
    store = RedisHlsStore(client, 60)
    try:
        feed(client, 2.0, box=False)
        assert store.get_playlist("cam") is None and not service.stats()["encoding"]
        ViewerTracker(client, 30).touch("cam")
        feed(client, 3.0, box=False)
        wait_until(lambda: store.get_playlist("cam"), 30, 0.2, "a playlist once watched")
        assert service.stats()["encoding"]
    finally:
        service.close()
