"""The soak check's verdict and chart on synthetic series (the soak itself is `lookout bench soak`)."""

import cv2

from tools.soak import plot, verdict


def rows(leak_mb_per_min=0.0, fps_drop=False, n=60):
    out = []
    for i in range(n):
        out.append(
            {
                "minute": i * 0.5,
                "rss_mb:ingest": 300 + (i % 3) + leak_mb_per_min * i * 0.5,
                "fds:ingest": 40,
                "redis_mb": 50 + (5 if i > 10 else i * 0.5),
                "hls_disk_mb": 2.0,
                "fps:a": 5.0 if fps_drop and i > n // 2 else 10.0,
            }
        )
    return out


def test_flat_series_pass_and_warm_up_growth_is_ignored():
    ok, lines = verdict(rows())
    assert ok, lines


def test_a_memory_leak_and_an_fps_collapse_fail():
    ok, lines = verdict(rows(leak_mb_per_min=1.0))  # 60 MB/h, allowance 25 MB/h
    assert not ok and any(line.startswith("FAIL rss_mb:ingest") for line in lines)
    ok, lines = verdict(rows(fps_drop=True))
    assert not ok and any(line.startswith("FAIL fps:a") for line in lines)


def test_plot_writes_a_png(tmp_path):
    plot(rows(), tmp_path / "soak.png")
    img = cv2.imread(str(tmp_path / "soak.png"))
    assert img is not None and img.shape[1] == 900 and (img < 250).any()
