"""Low-Latency HLS: the fMP4 splitter and playlist writer (pure), the segmenter with real ffmpeg
(parts that ffprobe decodes), blocking playlist reloads through the real gateway app with a real
Redis, and an LL camera playing in headless Chromium behind the real login."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import threading
import time

import numpy as np
import pytest
import redis
import uvicorn

from auth_fixtures import ADMIN_PASSWORD, make_ctx
from conftest import free_port, wait_port
from gateway.app import create_app
from hls.fmp4 import Fragment, FragmentSplitter, Mp4Error, box_header, parse_fragment, parse_init
from hls.llhls import (
    BadDirective,
    OpenSegment,
    Part,
    parse_directives,
    part_target_s,
    reload_ready,
    reload_state,
    reload_too_far,
    render_fmp4,
)
from hls.playlist import Entry, MediaPlaylist
from hls.segmenter import Segmenter
from hls.store import RedisHlsStore
from pipeline.bus import StatusStore
from pipeline.config import HlsConfig, parse_args
from pipeline.types import CameraState, CameraStatus
from rtsp_fixtures import wait_until

FPS = 10


def ffmpeg_fmp4(frag_us: int | None, seconds: float = 3) -> bytes:
    """Fragmented MP4 of a 10 fps test pattern with a keyframe per second, as the segmenter asks for."""
    argv = [
        "ffmpeg",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        f"testsrc=size=160x120:rate={FPS}",
        "-t",
        str(seconds),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-tune",
        "zerolatency",
        "-bf",
        "0",
        "-g",
        "10",
        "-keyint_min",
        "10",
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-f",
        "mp4",
        "-movflags",
        "+frag_keyframe+empty_moov+default_base_moof",
    ]
    argv += ["-frag_duration", str(frag_us)] if frag_us else []
    return subprocess.run([*argv, "pipe:1"], capture_output=True, check=True).stdout


def ffprobe_frames(path) -> tuple[int, int, int]:
    """(decoded frames, width, height) of a file, by actually decoding it."""
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,width,height",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    s = json.loads(out)["streams"][0]
    return int(s["nb_read_frames"]), s["width"], s["height"]


# --------------------------------------------------------------------------- fMP4 splitter


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def full_box(kind: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return box(kind, bytes([version]) + flags.to_bytes(3, "big") + payload)


def test_splitter_cuts_ffmpeg_output_in_any_chunking():
    data = ffmpeg_fmp4(frag_us=150_000)  # 2 frames per fragment at 10 fps
    for chunk in (1, 7, 1000, len(data)):
        splitter, pieces = FragmentSplitter(), []
        for i in range(0, len(data), chunk):
            pieces += splitter.feed(data[i : i + chunk])
        init, frags = pieces[0], pieces[1:]
        assert isinstance(init, bytes) and init[4:8] == b"ftyp" and b"moov" in init
        assert all(isinstance(f, Fragment) and f.data[4:8] == b"moof" for f in frags)
        assert len(frags) == 15 and [f.samples for f in frags] == [2] * 15
        assert [f.independent for f in frags] == [i % 5 == 0 for i in range(15)]  # a keyframe every 5th part
        assert [f.decode_time for f in frags] == [sum(g.duration for g in frags[:i]) for i in range(15)]
        assert sum(f.duration_s for f in frags) == pytest.approx(3.0)
        assert data.startswith(init + b"".join(f.data for f in frags))  # nothing lost, nothing reordered


def test_parse_fragment_defaults_and_flags():
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, 0) + b"\0" * 4)
    trex = full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 40, 0, 0x10000))  # default: 40 ticks, non-sync
    init = box(b"ftyp", b"isom") + box(b"moov", box(b"trak", box(b"mdia", mdhd)) + box(b"mvex", trex))
    d = parse_init(init)
    assert (d.timescale, d.default_duration, d.default_flags) == (1000, 40, 0x10000)
    tfhd = full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1))  # default-base-is-moof, no defaults
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", 2**33))
    # first_sample_flags = 0 (sync), durations from trex
    trun = full_box(b"trun", 0, 0x001 | 0x004, struct.pack(">IiI", 3, 0, 0))
    frag = parse_fragment(box(b"moof", box(b"traf", tfhd + tfdt + trun)) + box(b"mdat", b"x"), d)
    assert (frag.decode_time, frag.duration, frag.samples, frag.independent) == (2**33, 120, 3, True)
    # per-sample durations and flags, the first one non-sync; tfhd default duration overridden
    tfhd2 = full_box(b"tfhd", 0, 0x08, struct.pack(">II", 1, 99))
    trun2 = full_box(b"trun", 0, 0x100 | 0x400, struct.pack(">I", 2) + struct.pack(">IIII", 33, 0x10000, 34, 0))
    frag2 = parse_fragment(box(b"moof", box(b"traf", tfhd2 + trun2)) + box(b"mdat", b""), d)
    assert (frag2.decode_time, frag2.duration, frag2.samples, frag2.independent) == (0, 67, 2, False)


def test_box_framing_errors():
    assert box_header(b"\0\0\0\x10mda", 0) is None  # incomplete header: wait for more
    big = struct.pack(">I4sQ", 1, b"mdat", 24) + b"\0" * 8
    assert box_header(big, 0) == (b"mdat", 16, 24)  # 64-bit size
    with pytest.raises(Mp4Error, match="unusable size 0"):
        box_header(struct.pack(">I4s", 0, b"mdat"), 0)
    with pytest.raises(Mp4Error, match="moof came before the moov"):
        FragmentSplitter().feed(box(b"moof", b""))
    with pytest.raises(Mp4Error, match="without a whole fragment"):
        FragmentSplitter(max_buffer_bytes=100).feed(box(b"ftyp", b"x" * 200)[:150])


# --------------------------------------------------------------------------- playlists


def ll_playlist() -> tuple[MediaPlaylist, OpenSegment]:
    def parts(seg: int, n: int = 5) -> list[Part]:
        return [Part(f"s{seg}_{i}.m4s", 0.2, i == 0) for i in range(n)]

    pl = MediaPlaylist(media_sequence=7, discontinuity_sequence=1)
    for i in range(4):
        pl.entries.append(
            Entry(
                f"s{7 + i}.m4s",
                1.0,
                1_700_000_000.0 + i,
                discontinuity=i == 2,
                init="init1.mp4" if i < 2 else "init2.mp4",
                parts=parts(7 + i),
            )
        )
    return pl, OpenSegment("init2.mp4", 1_700_000_004.0, parts=parts(11, 2))


def test_ll_playlist_lines():
    pl, open_seg = ll_playlist()
    text = render_fmp4(pl, min_target_s=1.0, part_target=0.2, open_segment=open_seg)
    lines = text.splitlines()
    assert lines[:7] == [
        "#EXTM3U",
        "#EXT-X-VERSION:6",
        "#EXT-X-TARGETDURATION:1",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.60000",
        "#EXT-X-PART-INF:PART-TARGET=0.20000",
        "#EXT-X-MEDIA-SEQUENCE:7",
        "#EXT-X-DISCONTINUITY-SEQUENCE:1",
    ]
    assert lines[7:11] == [
        '#EXT-X-MAP:URI="init1.mp4"',
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z",
        "#EXTINF:1.00000,",
        "s7.m4s",
    ]  # the oldest segment lists no parts any more
    # a new init section after the discontinuity, once
    assert [ln for ln in lines if ln.startswith("#EXT-X-MAP")] == [
        '#EXT-X-MAP:URI="init1.mp4"',
        '#EXT-X-MAP:URI="init2.mp4"',
    ]
    assert lines.index("#EXT-X-DISCONTINUITY") == lines.index('#EXT-X-MAP:URI="init2.mp4"') - 1
    # parts: within 3 target durations of the end (segments 8..10 and the open one), keyframe parts INDEPENDENT
    part_lines = [ln for ln in lines if ln.startswith("#EXT-X-PART:")]
    assert len(part_lines) == 3 * 5 + 2 and not any("s7_" in ln for ln in part_lines)
    assert part_lines[0] == '#EXT-X-PART:DURATION=0.20000,URI="s8_0.m4s",INDEPENDENT=YES'
    assert part_lines[1] == '#EXT-X-PART:DURATION=0.20000,URI="s8_1.m4s"'
    assert lines[-3:] == [
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:24.000Z",
        '#EXT-X-PART:DURATION=0.20000,URI="s11_0.m4s",INDEPENDENT=YES',
        '#EXT-X-PART:DURATION=0.20000,URI="s11_1.m4s"',
    ]
    # the same playlist read back as a standard one (what clips and a restarted segmenter see)
    back = MediaPlaylist.parse(text)
    assert [(e.name, e.init, e.discontinuity) for e in back.entries] == [
        ("s7.m4s", "init1.mp4", False),
        ("s8.m4s", "init1.mp4", False),
        ("s9.m4s", "init2.mp4", True),
        ("s10.m4s", "init2.mp4", False),
    ]


def test_standard_fmp4_playlist_has_no_ll_tags():
    pl, open_seg = ll_playlist()
    text = render_fmp4(pl, min_target_s=1.0, part_target=None, open_segment=open_seg)
    assert "#EXT-X-VERSION:6" in text and text.count("#EXT-X-MAP") == 2 and text.count("#EXTINF") == 4
    for tag in ("SERVER-CONTROL", "PART-INF", "EXT-X-PART:", "s11_"):
        assert tag not in text
    assert part_target_s(2, 10) == 0.2 and part_target_s(1, 30) == 0.03334  # rounded up, never below


def test_blocking_reload_decisions():
    pl, open_seg = ll_playlist()
    st = reload_state(render_fmp4(pl, min_target_s=1.0, part_target=0.2, open_segment=open_seg))
    assert (st.low_latency, st.media_sequence, st.segments, st.next_msn, st.open_parts) == (True, 7, 4, 11, 2)
    assert st.parts == {8: 5, 9: 5, 10: 5} and st.advance_part_limit == 15
    assert reload_ready(st, 10, None) and not reload_ready(st, 11, None)  # a whole segment
    assert reload_ready(st, 11, 1) and not reload_ready(st, 11, 2)  # parts of the open segment
    assert reload_ready(st, 10, 4) and reload_ready(st, 10, 5)  # part 5 of 10 = part 0 of 11, which exists
    assert reload_ready(st, 3, 0) and reload_ready(st, 7, 9)  # gone or old: answer at once
    assert not reload_ready(st, 12, 0)
    assert not reload_too_far(st, 12, 0) and not reload_too_far(st, 11, 16)
    assert reload_too_far(st, 13, None) and reload_too_far(st, 11, 17) and reload_too_far(st, 12, 15)
    assert parse_directives({"_HLS_msn": "11", "_HLS_part": "2"}) == (11, 2)
    assert parse_directives({}) == (None, None)
    for bad in ({"_HLS_part": "1"}, {"_HLS_msn": "-1"}, {"_HLS_msn": "1.5"}, {"_HLS_msn": "9" * 30}):
        with pytest.raises(BadDirective):
            parse_directives(bad)


def test_bench_edge_lag_counts_parts():
    from tools.latency_bench import playlist_edge_lag

    pl, open_seg = ll_playlist()
    ll = render_fmp4(pl, part_target=0.2, open_segment=open_seg)  # open segment: 2 parts from :24
    assert playlist_edge_lag(ll, 1_700_000_005.0) == pytest.approx(0.6)
    standard = render_fmp4(pl, part_target=None, open_segment=open_seg)  # newest segment ends at :24
    assert playlist_edge_lag(standard, 1_700_000_005.0) == pytest.approx(1.0)


# --------------------------------------------------------------------------- segmenter + real ffmpeg


def frame(i: int, w: int, h: int) -> np.ndarray:
    f = np.full((h, w, 3), (i * 9) % 256, np.uint8)
    f[:, (i * 7) % w] = 255
    return f


def test_segmenter_ll_parts_decode(redis_server, tmp_path):
    client = redis.Redis.from_url(redis_server.url)
    store = RedisHlsStore(client, ttl_s=120)
    settings = HlsConfig(low_latency=True, part_s=0.2, list_size=6, keep_segments=8)
    seg = Segmenter("llcam", settings, store, fps=FPS, work_dir=str(tmp_path))
    t0 = time.time()
    try:
        for i in range(13):
            assert seg.write(frame(i, 320, 240), captured_at=t0 + i / FPS)
        # parts of the segment in progress are listed before it is complete
        text = wait_until(
            lambda: (
                (t := store.get_playlist("llcam"))
                and (st := reload_state(t)).segments == 1
                and st.open_parts == 1
                and t
            ),
            60,
            0.05,
            "a playlist with a part of the open segment",
        )
        assert "#EXT-X-PRELOAD-HINT" not in text
        for i in range(13, 25):
            seg.write(frame(i, 320, 240), captured_at=t0 + i / FPS)
        for i in range(25, 40):  # a new size: ffmpeg restarts, a discontinuity and a new init section
            seg.write(frame(i, 256, 192), captured_at=t0 + i / FPS)
    finally:
        seg.close()
    assert seg.healthy() and seg.restarts == 1
    text = store.get_playlist("llcam")
    pl = MediaPlaylist.parse(text)
    assert [round(e.duration_s, 3) for e in pl.entries] == [1.0, 1.0, 0.5, 1.0, 0.5]
    assert [e.discontinuity for e in pl.entries] == [False, False, False, True, False]
    inits = [e.init for e in pl.entries]
    assert inits[0] == inits[2] != inits[3] == inits[4]
    assert abs(pl.entries[1].program_date_time - (t0 + 1.0)) < 1e-3  # capture time of its first frame
    st = reload_state(text)
    # every segment ends within 3 target durations of the end (4 s of media here): all list their parts
    assert st.open_parts == 0 and st.parts == {0: 5, 1: 5, 2: 3, 3: 5, 4: 3}
    part_names = [
        ln.split('URI="')[1].rstrip('"').split('"')[0] for ln in text.splitlines() if ln.startswith("#EXT-X-PART:")
    ]
    independent = [ln.endswith("INDEPENDENT=YES") for ln in text.splitlines() if ln.startswith("#EXT-X-PART:")]
    assert independent == [True, False, False, False, False] * 2 + [True, False, False] + [
        True,
        False,
        False,
        False,
        False,
    ] + [True, False, False]
    for k, e in enumerate(pl.entries):
        init = store.get_segment("llcam", e.init)
        whole = tmp_path / f"seg{k}.mp4"
        whole.write_bytes(init + store.get_segment("llcam", e.name))
        n, w, h = ffprobe_frames(whole)
        assert (n, w, h) == (round(e.duration_s * FPS), *((320, 240) if k < 3 else (256, 192)))
    # a part on its own (with the init section) decodes, and the parts of a segment make up the segment
    init = store.get_segment("llcam", pl.entries[1].init)
    first_part = tmp_path / "part.mp4"
    first_part.write_bytes(init + store.get_segment("llcam", part_names[5]))
    assert ffprobe_frames(first_part) == (2, 320, 240)
    seg1_parts = [p for p in part_names if p.startswith(pl.entries[1].name[:-4] + "_")]
    assert b"".join(store.get_segment("llcam", p) for p in seg1_parts) == store.get_segment("llcam", pl.entries[1].name)


def test_segmenter_standard_fmp4(redis_server, tmp_path):
    """container: fmp4 without low_latency: whole segments behind an EXT-X-MAP, no parts stored or listed."""
    store = RedisHlsStore(redis.Redis.from_url(redis_server.url), ttl_s=120)
    seg = Segmenter("fcam", HlsConfig(container="fmp4"), store, fps=FPS, work_dir=str(tmp_path))
    try:
        for i in range(30):
            seg.write(frame(i, 320, 240))
    finally:
        seg.close()
    text = store.get_playlist("fcam")
    assert "#EXT-X-PART" not in text and "SERVER-CONTROL" not in text and text.count("#EXT-X-MAP") == 1
    pl = MediaPlaylist.parse(text)
    assert [e.duration_s for e in pl.entries] == [1.0, 1.0, 1.0]
    assert sorted(store.list_segments("fcam")) == sorted([e.name for e in pl.entries] + [pl.entries[0].init])
    whole = tmp_path / "all.mp4"
    whole.write_bytes(
        store.get_segment("fcam", pl.entries[0].init) + b"".join(store.get_segment("fcam", e.name) for e in pl.entries)
    )
    assert ffprobe_frames(whole) == (30, 320, 240)


# --------------------------------------------------------------------------- gateway: blocking reload


@pytest.fixture
def gateway(redis_server, tmp_path):
    from starlette.testclient import TestClient

    args = parse_args(
        {
            "cameras": [{"id": "a", "source": "x.avi"}],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "hls": {"low_latency": True},
            "gateway": {"auth": {"db_path": str(tmp_path / "auth.sqlite3"), "key_dir": str(tmp_path / "keys")}},
        }
    )
    from gateway.context import GatewayContext

    ctx = GatewayContext.from_args(args)
    client = TestClient(create_app(ctx), base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
    row, secret = ctx.auth.store.add_client("tests", {"admin"})
    token = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(row.client_id, secret))
    client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return ctx, client


def test_gateway_blocking_reload(gateway):
    ctx, client = gateway
    pl, open_seg = ll_playlist()
    ctx.hls_store.put_playlist("a", render_fmp4(pl, part_target=0.2, open_segment=open_seg))
    r = client.get("/hls/a/index.m3u8")  # no directives: at once (standard players, the first load)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    assert r.headers["cache-control"] == "private, no-cache"
    assert 'URI="s11_1.m4s?exp=' in r.text and 'URI="init2.mp4?exp=' in r.text  # parts and maps are signed
    # part 2 of segment 11 does not exist yet: the request waits until the segmenter publishes it
    answer = {}
    waiter = threading.Thread(target=lambda: answer.update(r=client.get("/hls/a/index.m3u8?_HLS_msn=11&_HLS_part=2")))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # held open
    open_seg.parts.append(Part("s11_2.m4s", 0.2, False))
    ctx.hls_store.put_playlist("a", render_fmp4(pl, part_target=0.2, open_segment=open_seg))
    waiter.join(30)
    assert answer["r"].status_code == 200 and 'URI="s11_2.m4s?exp=' in answer["r"].text
    # ready already / long gone: at once, the whole playlist
    for q in ("_HLS_msn=10", "_HLS_msn=11&_HLS_part=0", "_HLS_msn=2&_HLS_part=0"):
        r = client.get(f"/hls/a/index.m3u8?{q}")
        assert r.status_code == 200 and r.text.count("#EXTINF") == 4, q
    # bad or too far ahead: 400 at once
    for q in ("_HLS_part=1", "_HLS_msn=x", "_HLS_msn=11&_HLS_part=-1", "_HLS_msn=14", "_HLS_msn=11&_HLS_part=40"):
        assert client.get(f"/hls/a/index.m3u8?{q}").status_code == 400, q
    # never comes within 3 target durations: 503
    assert client.get("/hls/a/index.m3u8?_HLS_msn=12&_HLS_part=3").status_code == 503
    # parts, segments and init sections are MP4
    for name in ("s11_2.m4s", "init2.mp4"):
        ctx.hls_store.put_segment("a", name, b"\0\0\0\x08free")
        r = client.get(f"/hls/a/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4", name


def test_gateway_ignores_directives_on_a_standard_playlist(gateway):
    ctx, client = gateway
    ctx.hls_store.put_playlist("a", "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:3\n#EXTINF:1.0,\ns.ts\n")
    r = client.get("/hls/a/index.m3u8?_HLS_msn=9&_HLS_part=0")
    assert r.status_code == 200 and "s.ts?exp=" in r.text


# --------------------------------------------------------------------------- the page in Chromium


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="chromium-driver not installed")
@pytest.mark.parametrize("low_latency", [True, False], ids=["ll", "standard"])
def test_camera_plays_in_chromium(redis_server, tmp_path, monkeypatch, low_latency):
    """The page plays an LL playlist in hls.js's low-latency mode (parts, blocking reloads), and a
    standard one as before (1.5 s behind the newest segment)."""
    from app_fixtures import chromium, log_in

    ctx = make_ctx(redis_server.url, tmp_path, monkeypatch, cameras=("ll",))
    StatusStore(ctx.redis).register("ll", {"name": "LL camera", "kind": "file"})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    wait_port(port)
    seg = Segmenter("ll", HlsConfig(low_latency=low_latency), ctx.hls_store, fps=FPS, work_dir=str(tmp_path))
    stop = threading.Event()

    def feed():
        i, t0 = 0, time.monotonic()
        while not stop.is_set():
            if i % FPS == 0:
                StatusStore(ctx.redis).put(CameraStatus("ll", CameraState.RUNNING, fps=FPS))
            seg.write(frame(i, 320, 240))
            i += 1
            stop.wait(max(0.0, t0 + i / FPS - time.monotonic()))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    driver = chromium(tmp_path / "chromium")
    try:
        log_in(driver, f"http://127.0.0.1:{port}", ADMIN_PASSWORD, "/?camera=ll")
        tile = "window.lookout.tiles.get('ll')"
        wait_until(
            lambda: driver.execute_script(f"const t = {tile}; return !!t && t.video.currentTime > 1"),
            90,
            0.5,
            "the camera to start playing",
        )
        t1 = driver.execute_script(f"return {tile}.video.currentTime")
        wait_until(
            lambda: driver.execute_script(f"return {tile}.video.currentTime") > t1 + 3,
            60,
            0.5,
            "the camera to play on by 3 s",
        )
        s = driver.execute_script(f"""const t = {tile}, d = t.details;
            return {{ll: t.lowLatency, err: t.video.error, w: t.video.videoWidth,
                    parts: d && d.partList ? d.partList.length : 0, block: d ? d.canBlockReload : null,
                    latency: t.hls.latency, target: t.hls.targetLatency,
                    urls: performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/hls/ll/'))}}""")
        print(
            f"{'LL' if low_latency else 'standard'} HLS in Chromium: hls.js latency {s['latency']:.2f}s, "
            f"target {s['target']}"
        )
        assert s["err"] is None and s["w"] == 320
        if low_latency:
            assert s["ll"] is True and s["block"] is True and s["parts"] > 0
            # PART-HOLD-BACK; hls.js adds liveSyncOnStallIncrease per stall, at most a target duration (1 s)
            assert 0.6 - 1e-6 <= s["target"] <= 1.6 + 1e-6
            assert any("_HLS_msn=" in u and "_HLS_part=" in u for u in s["urls"])  # blocking reloads were made
            assert any(re.search(r"/\d{13}_\d{8}_\d+\.m4s\?", u) for u in s["urls"])  # parts were loaded
            assert any(re.search(r"/\d{13}_init\d{4}\.mp4\?", u) for u in s["urls"])
        else:
            # the page's 1.5 s (hls.js' own default would be 3 s); + at most a target duration after stalls
            assert s["ll"] is False and s["parts"] == 0 and 1.5 - 1e-6 <= s["target"] <= 2.5 + 1e-6
            assert not any("_HLS_" in u for u in s["urls"]) and any(".ts?" in u for u in s["urls"])
    finally:
        stop.set()
        feeder.join(10)
        driver.quit()
        seg.close()
        server.should_exit = True
