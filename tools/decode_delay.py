"""How long the camera ffmpeg's decoder holds frames back: `python -m tools.decode_delay [clip]`.

Reads the clip at its own rate (`-re`) through the detector output of the camera's ffmpeg (select at
5 fps, scaled, showinfo, raw frames on a pipe) and prints, per decoder setting, the median and least
(arrival − ffmpeg's start − pts) over the frames after the first 10: the decoder's hold-back plus
ffmpeg's constant start-up. Compare the settings side by side; only the differences mean anything.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import threading
import time

from hls.copy_args import detect_select

SETTINGS = {
    "frame threads (ffmpeg's default)": [],
    "-flags low_delay (what Lookout uses)": ["-flags", "low_delay"],
    "-threads 1": ["-threads", "1"],
}
W, H = 416, 312


def delays(clip: str, decoder: list[str], seconds: float = 8.0) -> list[float]:
    argv = [
        "ffmpeg",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "info",
        "-re",
        *decoder,
        "-i",
        clip,
        "-t",
        str(seconds),
        "-map",
        "0:v:0",
        "-vf",
        f"{detect_select(5)},scale={W}:{H},showinfo",
        "-fps_mode",
        "passthrough",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "pipe:1",
    ]
    t0 = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pts: list[float] = []

    def pump() -> None:
        for line in proc.stderr:
            m = re.search(rb"pts_time:([0-9.]+)", line)
            if m:
                pts.append(float(m.group(1)))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    arrivals = []
    while len(proc.stdout.read(W * H * 3)) == W * H * 3:
        arrivals.append(time.time() - t0)
    proc.wait()
    reader.join(5)
    return [a - p for a, p in zip(arrivals, pts)][10:]


def main() -> int:
    clip = sys.argv[1] if len(sys.argv) > 1 else "data/demo/vtest-h264.mp4"
    for name, decoder in SETTINGS.items():
        d = delays(clip, decoder)
        print(f"{name:40s} median {statistics.median(d):.3f} s, least {min(d):.3f} s ({len(d)} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
