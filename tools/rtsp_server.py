#!/usr/bin/python3
"""A small real RTSP server for tests (run it with the system python: it needs GstRtspServer via gi).

Serves H.264 (x264enc tune=zerolatency) at rtsp://127.0.0.1:PORT/NAME from a video file (looped
forever) or a test pattern. Frames are pushed at the source's frame rate like a live camera, whether
or not a client is connected.

  --stall-after S   every session stops receiving frames S seconds after it started, while the
                    RTSP/TCP connection stays open (RTCP keeps flowing): a stalled camera.
  --user/--password require RTSP basic authentication.
  --switch-size WxH SIGUSR1 toggles the served resolution between the source's and WxH (same
                    stream, new SPS: a camera whose resolution is changed mid-stream).
  --jump-s S        SIGUSR2 adds S seconds to every later timestamp of the sessions open then: a
                    camera whose clock (RTP timestamps, RTCP sender reports) jumps mid-stream; a
                    session opened later starts a timeline of its own, as a camera's does. Use
                    S < 0: the server's sinks hold frames stamped in the future, so a forward jump
                    stalls the stream.

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
            desc = (
                f'filesrc location="{args.file}" ! decodebin ! videoconvert ! videoscale ! '
                "capsfilter name=size caps=video/x-raw,format=I420 ! appsink name=sink sync=false max-buffers=4"
            )
        else:
            desc = (
                f"videotestsrc pattern={args.pattern} ! video/x-raw,framerate={args.fps}/1 ! videoscale ! "
                f"capsfilter name=size caps=video/x-raw,format=I420,width={args.width},height={args.height} ! "
                "appsink name=sink sync=false max-buffers=4"
            )
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
        self.sizes = [(st.get_value("width"), st.get_value("height"))]
        if args.switch_size:
            w, h = (int(v) for v in args.switch_size.lower().split("x"))
            self.sizes.append((w, h))
        self.size_index = 0
        self.cur_size = self.sizes[0]
        self.caps = self._caps(self.cur_size)
        self.pts_offset = 0
        self.jump_ns = int((args.jump_s or 0) * Gst.SECOND)
        self.stall_after = args.stall_after
        self.lock = threading.Lock()
        self.medias: dict[int, list] = {}  # [appsrc, started (monotonic), clock offset (ns)]
        self.pipeline.set_state(Gst.State.PLAYING)
        threading.Thread(target=self._run, daemon=True).start()

    def _caps(self, size: tuple[int, int]) -> Gst.Caps:
        return Gst.Caps.from_string(
            f"video/x-raw,format=I420,width={size[0]},height={size[1]},framerate={int(round(self.fps))}/1"
        )

    def switch_size(self) -> bool:
        """SIGUSR1: the next frames come at the other size."""
        if len(self.sizes) > 1:
            self.size_index = 1 - self.size_index
            size = self.sizes[self.size_index]
            self.pipeline.get_by_name("size").set_property("caps", self._caps(size).copy())
            print(f"SIZE {size[0]}x{size[1]}", flush=True)
        return True

    def jump(self) -> bool:
        """SIGUSR2: later timestamps of the open sessions move by --jump-s."""
        self.pts_offset += self.jump_ns
        with self.lock:
            for media in self.medias.values():
                media[2] += self.jump_ns
        print(f"JUMP {self.pts_offset / Gst.SECOND:+g}s", flush=True)
        return True

    def add(self, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", self.caps)
        key = id(media)
        with self.lock:
            self.medias[key] = [appsrc, time.monotonic(), 0]  # its clock's jumps (ns)
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
        st = sample.get_caps().get_structure(0)
        size = (st.get_value("width"), st.get_value("height"))
        if size != self.cur_size:
            self.cur_size, self.caps = size, self._caps(size)
            with self.lock:
                targets = list(self.medias.values())
            for appsrc, _, _ in targets:
                appsrc.set_property("caps", self.caps)
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
            for appsrc, started, offset_ns in targets:
                if self.stall_after is not None and now - started >= self.stall_after:
                    continue
                self._push(appsrc, buf, offset_ns)

    def _push(self, appsrc: Gst.Element, buf: Gst.Buffer, offset_ns: int) -> None:
        # stamp with the media pipeline's running time; before it plays there is none, so skip
        clock = appsrc.get_clock()
        if clock is None or appsrc.get_state(0)[1] != Gst.State.PLAYING:
            return
        out = buf.copy()
        out.pts = max(0, clock.get_time() - appsrc.get_base_time() + offset_ns)
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
    p.add_argument("--switch-size", default=None, help="WxH: SIGUSR1 toggles to this size and back")
    p.add_argument("--jump-s", type=float, default=None, help="SIGUSR2 moves later timestamps by this")
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
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR1, feeder.switch_size)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR2, feeder.jump)
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}/{args.name}", flush=True)
    loop.run()
    feeder.pipeline.set_state(Gst.State.NULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
