#!/usr/bin/python3
"""A small real RTSP server for tests (run it with the system python: it needs GstRtspServer via gi).

Serves H.264 (x264enc tune=zerolatency) at rtsp://127.0.0.1:PORT/NAME from a video file (looped
forever) or a test pattern. Frames are pushed at the source's frame rate like a live camera, whether
or not a client is connected.

  --stall-after S   every session stops receiving frames S seconds after it started, while the
                    RTSP/TCP connection stays open (RTCP keeps flowing): a stalled camera.
  --user/--password require RTSP basic authentication.

Prints "READY <url>" on stdout once it listens; exits on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ENCODER = (
    "appsrc name=src is-live=true format=time max-bytes=0 max-buffers=4 leaky-type=downstream ! videoconvert ! "
    "x264enc tune=zerolatency speed-preset=ultrafast threads=1 key-int-max={gop} bitrate={kbps} ! "
    "video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=-1"
)


class Feeder:
    """Decodes the file (or renders the pattern) and pushes frames to every live media at the source's rate."""

    def __init__(self, args: argparse.Namespace):
        if args.file:
            desc = (f'filesrc location="{args.file}" ! decodebin ! videoconvert ! '
                    "video/x-raw,format=I420 ! appsink name=sink sync=false max-buffers=4")
        else:
            desc = (f"videotestsrc pattern={args.pattern} ! video/x-raw,format=I420,width={args.width},"
                    f"height={args.height},framerate={args.fps}/1 ! appsink name=sink sync=false max-buffers=4")
        self.pipeline = Gst.parse_launch(desc)
        self.sink = self.pipeline.get_by_name("sink")
        self.pipeline.set_state(Gst.State.PAUSED)
        ret, _, _ = self.pipeline.get_state(30 * Gst.SECOND)
        if ret == Gst.StateChangeReturn.FAILURE:
            raise SystemExit(f"cannot decode {args.file or args.pattern}")
        sample = self.sink.emit("pull-preroll")
        caps = sample.get_caps()
        st = caps.get_structure(0)
        ok, num, den = st.get_fraction("framerate")
        self.fps = float(args.fps) if args.fps else (num / den if ok and num > 0 else 25.0)
        self.caps = Gst.Caps.from_string(
            f"video/x-raw,format=I420,width={st.get_value('width')},height={st.get_value('height')},"
            f"framerate={int(round(self.fps))}/1")
        self.stall_after = args.stall_after
        self.lock = threading.Lock()
        self.medias: dict[int, tuple[Gst.Element, float]] = {}
        self.pipeline.set_state(Gst.State.PLAYING)
        threading.Thread(target=self._run, daemon=True).start()

    def add(self, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", self.caps)
        key = id(media)
        with self.lock:
            self.medias[key] = (appsrc, time.monotonic())
        media.connect("unprepared", lambda *_: self._remove(key))

    def _remove(self, key: int) -> None:
        with self.lock:
            self.medias.pop(key, None)

    def _next_buffer(self) -> Gst.Buffer | None:
        sample = self.sink.emit("try-pull-sample", 2 * Gst.SECOND)
        if sample is None:
            if self.sink.get_property("eos"):
                self.pipeline.seek_simple(Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0)
            return None
        return sample.get_buffer()

    def _run(self) -> None:
        t0 = time.monotonic()
        n = 0
        while True:
            buf = self._next_buffer()
            if buf is None:
                continue
            n += 1
            delay = t0 + n / self.fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            with self.lock:
                targets = list(self.medias.values())
            for appsrc, started in targets:
                if self.stall_after is not None and now - started >= self.stall_after:
                    continue
                self._push(appsrc, buf)

    def _push(self, appsrc: Gst.Element, buf: Gst.Buffer) -> None:
        # stamp with the media pipeline's running time; before it plays there is none, so skip
        clock = appsrc.get_clock()
        if clock is None or appsrc.get_state(0)[1] != Gst.State.PLAYING:
            return
        out = buf.copy()
        out.pts = clock.get_time() - appsrc.get_base_time()
        out.dts = Gst.CLOCK_TIME_NONE
        out.duration = int(Gst.SECOND / self.fps)
        appsrc.emit("push-buffer", out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="cam")
    p.add_argument("--file", help="video file to serve, looped (default: a test pattern)")
    p.add_argument("--pattern", default="ball", help="videotestsrc pattern when no --file")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--fps", type=int, default=None, help="frame rate (default: the file's, or 10)")
    p.add_argument("--kbps", type=int, default=1500)
    p.add_argument("--stall-after", type=float, default=None)
    p.add_argument("--user")
    p.add_argument("--password")
    args = p.parse_args()
    if not args.file and args.fps is None:
        args.fps = 10

    Gst.init(None)
    feeder = Feeder(args)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( {ENCODER.format(gop=max(1, int(round(feeder.fps))), kbps=args.kbps)} )")
    factory.set_shared(True)
    factory.connect("media-configure", lambda _f, media: feeder.add(media))
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        perms = GstRtspServer.RTSPPermissions()
        perms.add_permission_for_role("user", "media.factory.access", True)
        perms.add_permission_for_role("user", "media.factory.construct", True)
        factory.set_permissions(perms)
    server.get_mount_points().add_factory(f"/{args.name}", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 2

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}/{args.name}", flush=True)
    loop.run()
    feeder.pipeline.set_state(Gst.State.NULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
