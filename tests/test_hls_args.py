"""hls.ffmpeg_args: the ffmpeg command lines, compared argument by argument."""

from __future__ import annotations

import pytest

from pydantic import ValidationError

from hls.ffmpeg_args import (
    container,
    default_bitrate_kbps,
    encode_args,
    fmp4_args,
    gop_frames,
    output_size,
    part_frames,
)
from pipeline.config import HlsConfig

OUT = "/data/hls/cam1/run0001"


def split(argv: list[str], out_path: str = f"{OUT}/index.m3u8") -> dict:
    """argv -> {bin, input_opts, input, filter, output_opts, output, global}; fails on repeats."""
    i = argv.index("-i")
    assert argv.count("-i") == 1
    o = argv.index(out_path)

    def pairs(seq: list[str]) -> dict[str, str | None]:
        d: dict[str, str | None] = {}
        k = 0
        while k < len(seq):
            assert seq[k].startswith("-"), f"unexpected value {seq[k]!r} in {seq}"
            has_value = k + 1 < len(seq) and not (seq[k + 1].startswith("-") and seq[k + 1][1:2].isalpha())
            assert seq[k] not in d, f"{seq[k]} given twice"
            d[seq[k]] = seq[k + 1] if has_value else None
            k += 2 if has_value else 1
        return d

    out_opts = pairs(argv[i + 2 : o])
    return {
        "bin": argv[0],
        "input_opts": pairs(argv[1:i]),
        "input": argv[i + 1],
        "filter": (out_opts.pop("-filter_complex", None), out_opts.pop("-map", None)),
        "output_opts": out_opts,
        "output": argv[o],
        "global": argv[o + 1 :],
    }


COMMON_OUT = {
    "-pix_fmt": "yuv420p",
    "-bf": "0",
    "-g": "10",
    "-keyint_min": "10",
    "-sc_threshold": "0",
    "-force_key_frames": "expr:gte(t,n_forced*1)",
    "-an": None,
    "-f": "hls",
    "-hls_time": "1",
    "-hls_list_size": "10",
    "-hls_flags": "delete_segments+temp_file+independent_segments",
    "-hls_segment_type": "mpegts",
    "-hls_segment_filename": f"{OUT}/seg_%06d.ts",
    "-start_number": "0",
}


def test_default_libx264_exact_argv():
    argv = encode_args(320, 240, 10, HlsConfig(segment_s=1), OUT)
    assert argv == [
        "ffmpeg",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-r",
        "10",
        "-s",
        "320x240",
        "-i",
        "pipe:0",
        "-f",
        "hls",
        "-an",
        "-bf",
        "0",
        "-c:v",
        "libx264",
        "-crf",
        "26",
        "-force_key_frames",
        "expr:gte(t,n_forced*1)",
        "-g",
        "10",
        "-hls_flags",
        "delete_segments+temp_file+independent_segments",
        "-hls_list_size",
        "10",
        "-hls_segment_filename",
        f"{OUT}/seg_%06d.ts",
        "-hls_segment_type",
        "mpegts",
        "-hls_time",
        "1",
        "-keyint_min",
        "10",
        "-pix_fmt",
        "yuv420p",
        "-preset",
        "veryfast",
        "-sc_threshold",
        "0",
        "-start_number",
        "0",
        "-tune",
        "zerolatency",
        f"{OUT}/index.m3u8",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
    ]


def test_input_is_raw_bgr_on_stdin():
    a = split(encode_args(640, 360, 25, HlsConfig(), OUT, ffmpeg_bin="/opt/ffmpeg/bin/ffmpeg"))
    assert a["bin"] == "/opt/ffmpeg/bin/ffmpeg"
    assert a["input_opts"] == {"-f": "rawvideo", "-pix_fmt": "bgr24", "-s": "640x360", "-r": "25"}
    assert a["input"] == "pipe:0"
    assert a["output"] == f"{OUT}/index.m3u8"
    assert a["global"] == ["-hide_banner", "-nostdin", "-loglevel", "warning"]


def test_libx264_crf_options():
    a = split(encode_args(320, 240, 10, HlsConfig(preset="ultrafast", crf=30), OUT))
    assert a["filter"] == (None, None)  # no scaling asked, none done
    assert a["output_opts"] == {
        **COMMON_OUT,
        "-c:v": "libx264",
        "-preset": "ultrafast",
        "-tune": "zerolatency",
        "-crf": "30",
    }


def test_libx264_bitrate_and_scale():
    s = HlsConfig(width_px=640, height_px=480, bitrate_kbps=1500, segment_s=2)
    a = split(encode_args(320, 240, 15, s, OUT))
    assert a["filter"] == ("[0]scale=640:480[s0]", "[s0]")
    assert a["output_opts"] == {
        **COMMON_OUT,
        "-g": "30",
        "-keyint_min": "30",
        "-hls_time": "2",
        "-force_key_frames": "expr:gte(t,n_forced*2)",
        "-c:v": "libx264",
        "-preset": "veryfast",
        "-tune": "zerolatency",
        "-b:v": "1500k",
        "-maxrate": "1500k",
        "-bufsize": "3000k",
    }
    assert "-crf" not in a["output_opts"]


def test_nvenc_constant_quality():
    a = split(encode_args(320, 240, 10, HlsConfig(encoder="h264_nvenc", preset="veryfast", crf=23), OUT))
    assert a["output_opts"] == {
        **COMMON_OUT,
        "-c:v": "h264_nvenc",
        "-preset": "p2",
        "-tune": "ll",
        "-zerolatency": "1",
        "-forced-idr": "1",
        "-no-scenecut": "1",
        "-rc": "vbr",
        "-cq": "23",
        "-b:v": "0",
    }


def test_nvenc_bitrate_and_native_preset():
    a = split(encode_args(320, 240, 10, HlsConfig(encoder="h264_nvenc", preset="p6", bitrate_kbps=800), OUT))
    opts = a["output_opts"]
    assert opts["-preset"] == "p6"
    assert (opts["-rc"], opts["-b:v"], opts["-maxrate"], opts["-bufsize"]) == ("cbr", "800k", "800k", "1600k")
    assert "-cq" not in opts


def test_jetson_maps_to_h264_nvv4l2enc():
    a = split(encode_args(1280, 720, 30, HlsConfig(encoder="nvv4l2h264enc", segment_s=1), OUT))
    assert a["output_opts"] == {
        **COMMON_OUT,
        "-g": "30",
        "-keyint_min": "30",
        "-c:v": "h264_nvv4l2enc",
        "-b:v": f"{default_bitrate_kbps(1280, 720, 30)}k",
    }
    b = split(encode_args(1280, 720, 30, HlsConfig(encoder="nvv4l2h264enc", bitrate_kbps=4000), OUT))
    assert b["output_opts"]["-b:v"] == "4000k"


def test_fractional_fps_and_segment():
    a = split(encode_args(320, 240, 29.97, HlsConfig(segment_s=1.5), OUT))
    assert a["input_opts"]["-r"] == "29.97"
    assert a["output_opts"]["-g"] == a["output_opts"]["-keyint_min"] == "45"  # round(29.97*1.5)
    assert a["output_opts"]["-hls_time"] == "1.5"
    assert a["output_opts"]["-force_key_frames"] == "expr:gte(t,n_forced*1.5)"


def test_odd_sizes_are_scaled_to_even():
    a = split(encode_args(321, 241, 10, HlsConfig(), OUT))
    assert a["input_opts"]["-s"] == "321x241"
    assert a["filter"] == ("[0]scale=320:240[s0]", "[s0]")
    assert output_size(100, 50, HlsConfig(width_px=161, height_px=91)) == (160, 90)


def test_helpers_and_bad_input():
    assert gop_frames(10, 1) == 10 and gop_frames(0.5, 1) == 1
    assert default_bitrate_kbps(160, 120, 5) == 200  # floor
    with pytest.raises(ValueError, match="fps"):
        encode_args(320, 240, 0, HlsConfig(), OUT)
    with pytest.raises(ValueError, match="0x240"):
        encode_args(0, 240, 10, HlsConfig(), OUT)


# fMP4 to stdout (standard fMP4 HLS and Low-Latency HLS)
FMP4_OUT = {k: v for k, v in COMMON_OUT.items() if not k.startswith("-hls") and k != "-start_number"}
FMP4_OUT.update(
    {
        "-f": "mp4",
        "-movflags": "+frag_keyframe+empty_moov+default_base_moof",
        "-flush_packets": "1",
        "-c:v": "libx264",
        "-preset": "veryfast",
        "-tune": "zerolatency",
        "-crf": "26",
    }
)


def test_ll_fmp4_exact_argv():
    argv = fmp4_args(320, 240, 10, HlsConfig(low_latency=True))
    assert argv == [
        "ffmpeg",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-r",
        "10",
        "-s",
        "320x240",
        "-i",
        "pipe:0",
        "-f",
        "mp4",
        "-an",
        "-bf",
        "0",
        "-c:v",
        "libx264",
        "-crf",
        "26",
        "-flush_packets",
        "1",
        "-force_key_frames",
        "expr:gte(t,n_forced*1)",
        "-frag_duration",
        "150000",
        "-g",
        "10",
        "-keyint_min",
        "10",
        "-movflags",
        "+frag_keyframe+empty_moov+default_base_moof",
        "-pix_fmt",
        "yuv420p",
        "-preset",
        "veryfast",
        "-sc_threshold",
        "0",
        "-tune",
        "zerolatency",
        "pipe:1",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
    ]


def test_fmp4_parts_are_whole_frames():
    # 25 fps, 0.2 s parts: 5 frames; ffmpeg cuts before the first packet at or past -frag_duration (µs)
    a = split(fmp4_args(640, 360, 25, HlsConfig(low_latency=True, part_s=0.2)), "pipe:1")
    assert a["output_opts"] == {**FMP4_OUT, "-g": "25", "-keyint_min": "25", "-frag_duration": "180000"}
    assert a["input"] == "pipe:0" and a["output"] == "pipe:1"
    assert part_frames(25, 0.2) == 5 and part_frames(10, 0.33) == 3 and part_frames(5, 0.05) == 1
    # standard fMP4: one fragment per segment (cut at keyframes only), scaled like the TS output
    b = split(fmp4_args(321, 241, 10, HlsConfig(container="fmp4", segment_s=2)), "pipe:1")
    assert b["filter"] == ("[0]scale=320:240[s0]", "[s0]")
    assert b["output_opts"] == {
        **FMP4_OUT,
        "-g": "20",
        "-keyint_min": "20",
        "-force_key_frames": "expr:gte(t,n_forced*2)",
    }
    with pytest.raises(ValueError, match="fps"):
        fmp4_args(320, 240, 0, HlsConfig(low_latency=True))


def test_container_and_low_latency_config():
    assert container(HlsConfig()) == "mpegts" and container(HlsConfig(container="fmp4")) == "fmp4"
    assert container(HlsConfig(low_latency=True)) == "fmp4"
    with pytest.raises(ValidationError, match="low_latency needs container 'fmp4'"):
        HlsConfig(low_latency=True, container="mpegts")
    with pytest.raises(ValidationError, match=r"part_s \(1.0\) must be less than segment_s \(1.0\)"):
        HlsConfig(low_latency=True, part_s=1.0)
    with pytest.raises(ValidationError, match="part_s"):
        HlsConfig(part_s=0.01)
