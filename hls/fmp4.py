"""Pure functions: split ffmpeg's fragmented MP4 byte stream into an init section and fragments.

ffmpeg (`-f mp4 -movflags +frag_keyframe+empty_moov+default_base_moof`) writes `ftyp` + `moov`
(the Media Initialization Section, `EXT-X-MAP`) and then one `moof` + `mdat` pair per fragment.
`FragmentSplitter.feed()` takes the bytes as they come off the pipe and returns whole pieces;
each fragment is read far enough (ISO/IEC 14496-12: `tfhd`, `tfdt`, `trun`, `trex`, `mdhd`) to
know its decode time, duration and whether it starts with a sync sample (a keyframe).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

_CONTAINERS = {b"moov", b"trak", b"mdia", b"mvex", b"moof", b"traf"}
_SAMPLE_NON_SYNC = 0x10000  # sample_is_non_sync_sample bit of the sample flags


class Mp4Error(ValueError):
    """The byte stream is not the fragmented MP4 this module expects."""


def box_header(buf: bytes | bytearray | memoryview, pos: int) -> tuple[bytes, int, int] | None:
    """(type, header size, total size) of the box at `pos`, or None if the header is incomplete.

    A size of 0 ("to the end of the file") cannot be framed in a stream and raises Mp4Error."""
    if len(buf) - pos < 8:
        return None
    size, kind = struct.unpack_from(">I4s", buf, pos)
    header = 8
    if size == 1:
        if len(buf) - pos < 16:
            return None
        (size,) = struct.unpack_from(">Q", buf, pos + 8)
        header = 16
    if size == 0 or size < header:
        raise Mp4Error(f"box {kind!r} at byte {pos} has an unusable size {size}")
    return kind, header, size


def iter_boxes(buf: bytes | memoryview, start: int = 0, end: int | None = None):
    """(type, payload start, box end) of each complete box in buf[start:end]."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        h = box_header(buf[:end], pos)
        if h is None or pos + h[2] > end:
            raise Mp4Error(f"truncated box at byte {pos}")
        kind, header, size = h
        yield kind, pos + header, pos + size
        pos += size


def find_boxes(buf: bytes, path: list[bytes], start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(payload start, end) of every box at `path` (e.g. [b"moof", b"traf", b"trun"])."""
    out = []
    for kind, p0, p1 in iter_boxes(buf, start, end):
        if kind == path[0]:
            if len(path) == 1:
                out.append((p0, p1))
            elif kind in _CONTAINERS:
                out += find_boxes(buf, path[1:], p0, p1)
    return out


@dataclass(frozen=True)
class TrackDefaults:
    """What a fragment needs from the init section (track 1 only: one video track)."""

    timescale: int
    default_duration: int = 0  # trex default_sample_duration
    default_flags: int = 0  # trex default_sample_flags


def parse_init(init: bytes) -> TrackDefaults:
    """Timescale and fragment defaults of the (first) track in an ftyp+moov init section."""
    mdhd = find_boxes(init, [b"moov", b"trak", b"mdia", b"mdhd"])
    if not mdhd:
        raise Mp4Error("init section has no moov/trak/mdia/mdhd")
    p = mdhd[0][0]
    version = init[p]
    timescale = struct.unpack_from(">I", init, p + (20 if version == 1 else 12))[0]
    if timescale <= 0:
        raise Mp4Error(f"track timescale {timescale}")
    trex = find_boxes(init, [b"moov", b"mvex", b"trex"])
    if trex:
        # version/flags, track_ID, default_sample_description_index, duration, size, flags
        _, _, _, dur, _, flags = struct.unpack_from(">IIIIII", init, trex[0][0])
        return TrackDefaults(timescale, dur, flags)
    return TrackDefaults(timescale)


@dataclass(frozen=True)
class Fragment:
    """One moof+mdat pair: a Partial Segment."""

    data: bytes
    decode_time: int  # tfdt baseMediaDecodeTime, in timescale units
    duration: int  # sum of its sample durations, in timescale units
    timescale: int
    samples: int
    independent: bool  # its first sample is a sync sample

    @property
    def start_s(self) -> float:
        return self.decode_time / self.timescale

    @property
    def duration_s(self) -> float:
        return self.duration / self.timescale


def parse_fragment(data: bytes, defaults: TrackDefaults) -> Fragment:
    """Decode time, duration, sample count and independence of one moof(+mdat)."""
    tfhd = find_boxes(data, [b"moof", b"traf", b"tfhd"])
    trun = find_boxes(data, [b"moof", b"traf", b"trun"])
    if not tfhd or not trun:
        raise Mp4Error("fragment without moof/traf/tfhd or trun")
    p = tfhd[0][0]
    tf_flags = struct.unpack_from(">I", data, p)[0] & 0xFFFFFF
    q = p + 8  # version/flags, track_ID
    q += 8 if tf_flags & 0x01 else 0  # base_data_offset
    q += 4 if tf_flags & 0x02 else 0  # sample_description_index
    default_duration, default_flags = defaults.default_duration, defaults.default_flags
    if tf_flags & 0x08:
        default_duration = struct.unpack_from(">I", data, q)[0]
        q += 4
    q += 4 if tf_flags & 0x10 else 0  # default_sample_size
    if tf_flags & 0x20:
        default_flags = struct.unpack_from(">I", data, q)[0]
    decode_time = 0
    tfdt = find_boxes(data, [b"moof", b"traf", b"tfdt"])
    if tfdt:
        t = tfdt[0][0]
        decode_time = struct.unpack_from(">Q" if data[t] == 1 else ">I", data, t + 4)[0]
    duration = samples = 0
    first_flags = None
    for t0, _ in trun:
        tr_flags = struct.unpack_from(">I", data, t0)[0] & 0xFFFFFF
        count = struct.unpack_from(">I", data, t0 + 4)[0]
        q = t0 + 8
        q += 4 if tr_flags & 0x001 else 0  # data_offset
        run_first = None
        if tr_flags & 0x004:
            run_first = struct.unpack_from(">I", data, q)[0]
            q += 4
        per = [f for f in (0x100, 0x200, 0x400, 0x800) if tr_flags & f]
        for i in range(count):
            dur, flags = default_duration, default_flags
            for f in per:
                value = struct.unpack_from(">I", data, q)[0]
                q += 4
                if f == 0x100:
                    dur = value
                elif f == 0x400:
                    flags = value
            if i == 0 and run_first is not None:
                flags = run_first
            if first_flags is None:
                first_flags = flags
            duration += dur
        samples += count
    if samples == 0:
        raise Mp4Error("fragment has no samples")
    return Fragment(data, decode_time, duration, defaults.timescale, samples, not (first_flags or 0) & _SAMPLE_NON_SYNC)


@dataclass
class FragmentSplitter:
    """Incremental framing of ffmpeg's fMP4 output: `feed(bytes)` -> new pieces, in order.

    Pieces are `bytes` (the init section: everything up to the end of `moov`) and `Fragment`s
    (a `moof` and its `mdat`). Other top-level boxes between fragments are dropped. Raises
    Mp4Error on a stream it cannot frame."""

    max_buffer_bytes: int = 64 * 1024 * 1024
    init: bytes | None = None
    defaults: TrackDefaults | None = None
    _buf: bytearray = field(default_factory=bytearray)
    _pos: int = 0  # bytes of _buf already framed into whole boxes
    _in_fragment: bool = False  # _buf starts with a moof whose mdat has not come yet

    def feed(self, data: bytes) -> list[bytes | Fragment]:
        self._buf += data
        out: list[bytes | Fragment] = []
        while True:
            h = box_header(self._buf, self._pos)
            if h is None or self._pos + h[2] > len(self._buf):
                break
            kind, _, size = h
            if self.init is None:
                self._pos += size
                if kind == b"moov":
                    self.init = self._take()
                    self.defaults = parse_init(self.init)
                    out.append(self.init)
                elif kind == b"moof":
                    raise Mp4Error("a moof came before the moov")
            elif kind == b"moof":
                if self._pos:  # stray boxes (free, styp, sidx...) before it
                    self._take()
                self._pos, self._in_fragment = size, True
            elif kind == b"mdat" and self._in_fragment:
                self._pos += size
                self._in_fragment = False
                assert self.defaults is not None  # parsed together with self.init
                out.append(parse_fragment(self._take(), self.defaults))
            else:
                self._pos += size
        if len(self._buf) > self.max_buffer_bytes:
            raise Mp4Error(f"more than {self.max_buffer_bytes} bytes without a whole fragment")
        return out

    def _take(self) -> bytes:
        piece = bytes(self._buf[: self._pos])
        del self._buf[: self._pos]
        self._pos = 0
        return piece
